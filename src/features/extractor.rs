//! A loaded TorchScript extractor: input normalisation, forward pass, named outputs.
use anyhow::{bail, Context};
use tch::{CModule, Device, IValue, Kind, Tensor};

use super::{DeviceSpec, InputRange, Manifest};
use crate::imaging::Prepared;
use crate::util::torch_err;

/// The floating-point type a model runs in. float32 is the default and the only one that matches
/// the references; float16 and bfloat16 are opt-in for speed on GPUs, their inputs normalised in
/// float32 first and their outputs widened back to float32.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }

    fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Fp16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "fp16" | "float16" => Ok(Precision::Fp16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => bail!("unknown precision {other:?}: expected fp32, fp16 or bf16"),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        })
    }
}

/// A model loaded once on one device, its outputs checked against the manifest.
pub struct Extractor {
    manifest: Manifest,
    module: CModule,
    device: Device,
    precision: Precision,
    /// Per output, its shape without the batch dimension, as seen on the warm-up batch.
    shapes: Vec<Vec<i64>>,
}

/// One batch's outputs, by manifest name, on the CPU.
pub struct ExtractedBatch {
    outputs: Vec<(String, Tensor)>,
}

impl ExtractedBatch {
    /// The output called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The output called `name` as float64 rows (batch × features), trailing 1-dims flattened.
    pub fn rows(&self, name: &str) -> anyhow::Result<ndarray::Array2<f64>> {
        self.rows_as(name)
    }

    /// [`Self::rows`] in float32, the models' own output type (exact for float32 outputs): half
    /// the memory for feature sets that metrics read in float64 row blocks anyway.
    pub fn rows_f32(&self, name: &str) -> anyhow::Result<ndarray::Array2<f32>> {
        self.rows_as(name)
    }

    fn rows_as<T>(&self, name: &str) -> anyhow::Result<ndarray::Array2<T>>
    where
        T: tch::kind::Element,
        for<'t> Vec<T>: TryFrom<&'t Tensor, Error = tch::TchError>,
    {
        let t = self
            .get(name)
            .with_context(|| format!("no output named {name:?}"))?;
        let n = t.size()[0];
        let flat = t.f_to_kind(T::KIND)?.f_contiguous()?.f_view([n, -1])?;
        let d = flat.size()[1];
        let data = Vec::<T>::try_from(&flat.f_view([-1])?)?;
        Ok(ndarray::Array2::from_shape_vec(
            (n as usize, d as usize),
            data,
        )?)
    }
}

impl Extractor {
    /// Loads the model named by `manifest` on `device`: checks the sha256, runs a warm-up batch and
    /// checks that the outputs are what the manifest says.
    pub fn load(manifest: Manifest, device: DeviceSpec) -> anyhow::Result<Self> {
        Self::load_in(manifest, device, Precision::Fp32)
    }

    /// [`Self::load`] with the weights converted to `precision`.
    #[tracing::instrument(skip_all, fields(id = %manifest.id, device = %device, precision = %precision))]
    pub fn load_in(
        manifest: Manifest,
        device: DeviceSpec,
        precision: Precision,
    ) -> anyhow::Result<Self> {
        if device == DeviceSpec::Cpu {
            // TorchScript's profiling executor profiles the first runs and re-optimises the graph
            // when the batch shape changes (warm-up at 2, then the run's batch size): about 0.5 s
            // per model load on the CPU (`gapmeter extract` on 4 images: 2.6–2.8 s with it,
            // 2.1–2.3 s without) for features identical to the last bit. On the CPU the profiled
            // graph gains nothing, as no fuser runs there; GPUs keep the default, where it may.
            tch::jit::set_profiling_mode(false);
        }
        let bytes = manifest.verified_model_bytes()?;
        let dev = device.to_device()?;
        let path = manifest.model_path();
        let mut module = CModule::load_data_on_device(&mut std::io::Cursor::new(bytes), dev)
            .map_err(torch_err)
            .with_context(|| format!("{}: not a loadable TorchScript module", path.display()))?;
        module.set_eval();
        if precision != Precision::Fp32 {
            // tch's `CModule::to` panics on a libtorch error instead of returning it.
            let converted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                module.to(dev, precision.kind(), false)
            }));
            if converted.is_err() {
                bail!(
                    "{}: libtorch could not convert the model to {precision}",
                    path.display()
                );
            }
        }
        let mut extractor = Self {
            manifest,
            module,
            device: dev,
            precision,
            shapes: Vec::new(),
        };
        extractor.shapes = extractor.warm_up()?;
        Ok(extractor)
    }

    fn warm_up(&self) -> anyhow::Result<Vec<Vec<i64>>> {
        let m = &self.manifest;
        let (h, w) = m.input_size.height_width();
        let path = m.model_path();
        let input = Tensor::f_zeros([2, 3, h as i64, w as i64], (Kind::Float, self.device))?;
        let outputs = self.forward(input).with_context(|| {
            format!(
                "{}: the model failed on a warm-up batch of 2×3×{h}×{w} (input_size in {}); \
                 does the manifest give the size the model expects?",
                path.display(),
                m.path.display()
            )
        })?;
        if outputs.len() != m.outputs.len() {
            bail!(
                "{}: the model returns {} output(s) but the manifest {} names {} ({:?})",
                path.display(),
                outputs.len(),
                m.path.display(),
                m.outputs.len(),
                m.outputs
            );
        }
        let mut shapes = Vec::new();
        for (name, t) in m.outputs.iter().zip(&outputs) {
            let size = t.size();
            if size.first() != Some(&2) {
                bail!(
                    "{}: output {name:?} has shape {size:?}; every output must have the batch as its first dimension",
                    path.display()
                );
            }
            shapes.push(size[1..].to_vec());
        }
        let feat = m.feature_output();
        let idx = m.outputs.iter().position(|o| o == feat).unwrap_or(0);
        if shapes[idx].iter().skip(1).any(|&s| s != 1) || shapes[idx].is_empty() {
            bail!(
                "{}: the feature output {feat:?} has per-image shape {:?}; content metrics need a vector per image",
                path.display(),
                shapes[idx]
            );
        }
        Ok(shapes)
    }

    fn forward(&self, input: Tensor) -> anyhow::Result<Vec<Tensor>> {
        let input = match self.precision {
            Precision::Fp32 => input,
            p => input.f_to_kind(p.kind())?,
        };
        let out =
            tch::no_grad(|| self.module.forward_is(&[IValue::Tensor(input)])).map_err(torch_err)?;
        let tensors = match out {
            IValue::Tensor(t) => vec![t],
            IValue::Tuple(items) | IValue::GenericList(items) => items
                .into_iter()
                .map(|v| match v {
                    IValue::Tensor(t) => Ok(t),
                    other => bail!("the model returned a non-tensor in its tuple: {other:?}"),
                })
                .collect::<anyhow::Result<_>>()?,
            IValue::TensorList(ts) => ts,
            other => bail!("the model returned neither a tensor nor a tuple of tensors: {other:?}"),
        };
        // Reduced-precision outputs leave as float32, like the default path's.
        tensors
            .into_iter()
            .map(|t| match t.kind() {
                Kind::Half | Kind::BFloat16 => Ok(t.f_to_kind(Kind::Float)?),
                _ => Ok(t),
            })
            .collect()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Names and per-image shapes of the outputs.
    pub fn output_shapes(&self) -> impl Iterator<Item = (&str, &[i64])> {
        self.manifest
            .outputs
            .iter()
            .map(String::as_str)
            .zip(self.shapes.iter().map(Vec::as_slice))
    }

    /// Dimension of the content feature vector.
    pub fn feature_dim(&self) -> usize {
        let feat = self.manifest.feature_output();
        self.output_shapes()
            .find(|(n, _)| *n == feat)
            .map(|(_, s)| s.iter().product::<i64>() as usize)
            .unwrap_or(0)
    }

    /// Normalises a batch of prepared images as the manifest says and runs the model.
    pub fn run(&self, batch: &[Prepared]) -> anyhow::Result<ExtractedBatch> {
        let m = &self.manifest;
        let (h, w) = m.input_size.height_width();
        let Some(first) = batch.first() else {
            bail!("empty batch");
        };
        if batch
            .iter()
            .any(|p| p.height != h || p.width != w || p.scale != first.scale)
        {
            bail!("batch images must all be prepared at {h}×{w} with one scale");
        }
        let mut data = Vec::with_capacity(batch.len() * 3 * h * w);
        for p in batch {
            data.extend_from_slice(&p.data);
        }
        let x = Tensor::from_slice(&data).f_view([batch.len() as i64, 3, h as i64, w as i64])?;
        let x = match self.device {
            Device::Cpu => x,
            // From page-locked memory the copy is a DMA the GPU runs asynchronously; the
            // normalisation below is queued behind it on the same stream.
            dev => x
                .f_pin_memory(dev)?
                .f_to_device_(dev, Kind::Float, true, false)?,
        };
        let x = normalise(x, first.scale, m)?;
        let outputs = self.forward(x)?;
        let mut named = Vec::with_capacity(outputs.len());
        for (name, t) in m.outputs.iter().zip(outputs) {
            named.push((name.clone(), t.f_to_device(Device::Cpu)?));
        }
        Ok(ExtractedBatch { outputs: named })
    }
}

/// The outputs of consecutive batches as one batch (rows in the order given).
pub(super) fn concat_batches(parts: Vec<ExtractedBatch>) -> anyhow::Result<ExtractedBatch> {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        bail!("no batch to concatenate");
    };
    let rest: Vec<ExtractedBatch> = parts.collect();
    let mut outputs = Vec::with_capacity(first.outputs.len());
    for (name, t) in first.outputs {
        let mut all = vec![t];
        for p in &rest {
            let other = p
                .get(&name)
                .with_context(|| format!("output {name:?} missing from a batch"))?;
            all.push(other.shallow_clone());
        }
        outputs.push((name, Tensor::f_cat(&all, 0)?));
    }
    Ok(ExtractedBatch { outputs })
}

/// Maps values on `scale` (255 or 1) to the manifest's range, then applies mean/std.
fn normalise(x: Tensor, scale: f32, m: &Manifest) -> anyhow::Result<Tensor> {
    // Written as the references write it: pytorch-fid computes 2·x − 1 on [0, 1] values.
    let unit = |x: Tensor| -> anyhow::Result<Tensor> {
        Ok(if scale == 1.0 {
            x
        } else {
            x.f_div_scalar(scale as f64)?
        })
    };
    let mut x = match m.input_range {
        InputRange::Byte if scale == 255.0 => x,
        InputRange::Byte => x.f_mul_scalar(255.0 / scale as f64)?,
        InputRange::Unit => unit(x)?,
        InputRange::Symmetric => unit(x)?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?,
    };
    // On the batch's device: after the copy, so a GPU does this work, not the host.
    let channel = |v: [f32; 3], x: &Tensor| -> anyhow::Result<Tensor> {
        Ok(Tensor::from_slice(&v)
            .f_view([1, 3, 1, 1])?
            .f_to_device(x.device())?)
    };
    if let Some(mean) = m.mean {
        x = x.f_sub(&channel(mean, &x)?)?;
    }
    if let Some(std) = m.std {
        x = x.f_div(&channel(std, &x)?)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest(range: &str, extra: &str) -> Manifest {
        let text = format!(
            "id = \"t\"\nfile = \"t.pt\"\nsha256 = \"{}\"\ninput_size = 1\ninput_range = \"{range}\"\noutputs = [\"f\"]\n{extra}",
            "0".repeat(64)
        );
        Manifest::parse(&text, Path::new("/m/t.toml")).unwrap()
    }

    fn apply(x: &[f32], scale: f32, m: &Manifest) -> Vec<f32> {
        let t = Tensor::from_slice(x).view([1, 3, 1, 1]);
        Vec::<f32>::try_from(&normalise(t, scale, m).unwrap().view([-1])).unwrap()
    }

    #[test]
    fn ranges_then_mean_std_as_documented() {
        // docs/extractors.md, "What the model receives": range first, then (x - mean) / std.
        let byte = [0.0, 127.5, 255.0];
        let unit = [0.0, 0.5, 1.0];
        assert_eq!(apply(&byte, 255.0, &manifest("0-255", "")), byte);
        assert_eq!(apply(&unit, 1.0, &manifest("0-255", "")), byte);
        assert_eq!(apply(&byte, 255.0, &manifest("0-1", "")), unit);
        assert_eq!(apply(&unit, 1.0, &manifest("-1-1", "")), [-1.0, 0.0, 1.0]);
        assert_eq!(apply(&byte, 255.0, &manifest("-1-1", "")), [-1.0, 0.0, 1.0]);
        let clean_fid = manifest("0-255", "mean = [128, 128, 128]\nstd = [128, 128, 128]\n");
        assert_eq!(
            apply(&byte, 255.0, &clean_fid),
            [-1.0, -0.5 / 128.0, 127.0 / 128.0]
        );
        let imagenet = manifest("0-1", "mean = [0.5, 0.25, 0.0]\nstd = [0.5, 0.25, 2.0]\n");
        assert_eq!(apply(&unit, 1.0, &imagenet), [-1.0, 1.0, 0.5]);
    }
}
