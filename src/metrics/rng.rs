//! numpy's legacy `RandomState` stream (MT19937), reproduced so that seeded subset draws are the
//! very ones torch-fidelity makes: with the same seed, gapmeter's KID subsets are identical to
//! `np.random.RandomState(seed).choice(n, m, replace=False)`, and so are the KID values.

const N: usize = 624;
const M: usize = 397;

/// MT19937 seeded like `np.random.RandomState(seed)` for an integer seed (`init_genrand`).
///
/// ```
/// use gapmeter::metrics::rng::LegacyRandomState;
/// // np.random.RandomState(0).randint(0, 2**32, dtype=np.uint64) draws 2357136044 first.
/// assert_eq!(LegacyRandomState::new(0).next_u32(), 2357136044);
/// ```
#[derive(Clone)]
pub struct LegacyRandomState {
    key: [u32; N],
    pos: usize,
}

impl LegacyRandomState {
    pub fn new(seed: u32) -> Self {
        let mut key = [0u32; N];
        key[0] = seed;
        for i in 1..N {
            let prev = key[i - 1];
            key[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { key, pos: N }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..N {
            let y = (self.key[i] & UPPER) | (self.key[(i + 1) % N] & LOWER);
            let mut v = self.key[(i + M) % N] ^ (y >> 1);
            if y & 1 == 1 {
                v ^= MATRIX_A;
            }
            self.key[i] = v;
        }
        self.pos = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.pos == N {
            self.generate();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `RandomState.random_sample()`: a double in [0, 1) from 53 random bits of two draws.
    pub fn random_sample(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        (hi << 32) | self.next_u32() as u64
    }

    /// A uniform integer in [0, max] by masked rejection, as numpy's `random_interval`.
    pub fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        loop {
            let v = if max <= u32::MAX as u64 {
                (self.next_u32() as u64) & mask
            } else {
                self.next_u64() & mask
            };
            if v <= max {
                return v;
            }
        }
    }

    /// `RandomState.permutation(n)`: a Fisher–Yates shuffle of 0..n from the last element down.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.random_interval(i as u64) as usize;
            idx.swap(i, j);
        }
        idx
    }

    /// `RandomState.choice(n, m, replace=False)`: the first m entries of a permutation.
    pub fn choice_without_replacement(&mut self, n: usize, m: usize) -> Vec<usize> {
        let mut p = self.permutation(n);
        p.truncate(m);
        p
    }
}
