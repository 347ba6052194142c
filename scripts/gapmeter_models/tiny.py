"""A small CNN with the same interface as the FID Inception (pool, logits, early taps), for fast
tests: 64 x 64 input, 128-d pool features, 10 logits, a 16-channel early map at 32 x 32."""
import torch.nn.functional as F
from torch import nn


def _block(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _block(3, 16, 2)
        self.body = nn.Sequential(_block(16, 32, 2), _block(32, 64, 2), _block(64, 128, 1))
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        early = self.stem(x)
        x = self.body(early)
        pool = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return pool, self.fc(pool), early
