//! Where the models run (`cpu`, `cuda`, `cuda:N`) and in which floating-point type, parsed from
//! the command line and opened as a candle [`Device`] with errors that name what is missing.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// A device as the user names it: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU (the fast engine where it covers the architecture).
    #[default]
    Cpu,
    /// NVIDIA GPU number `N` (CUDA ordinal), running the reference models.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let t = text.trim().to_ascii_lowercase();
        let bad = || {
            Error::InvalidInput(format!(
                "unknown device `{text}`: write `cpu`, `cuda` or `cuda:N` (N the GPU's number, \
                 as nvidia-smi lists them)"
            ))
        };
        match t.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let n = t.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(Self::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device. A CUDA device needs a build with the `cuda` feature and a usable GPU;
    /// otherwise the error says which is missing.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

/// Whether this build can run models on NVIDIA GPUs (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device> {
    Err(Error::Device(
        "this bertqa was built without CUDA support; rebuild with `cargo build --release \
         --features cuda` (see the README's GPU section)"
            .into(),
    ))
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda(ordinal).map_err(|e| {
        Error::Device(format!(
            "cannot open CUDA device {ordinal}: {e}. Check that the NVIDIA driver is loaded and \
             that GPU {ordinal} exists (`nvidia-smi -L` lists them)"
        ))
    })?;
    // f32 products in full f32 (no TF32), so that answers match the CPU's. This is candle's
    // default; it is set here so that nothing else in the process can have changed it.
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(false);
    Ok(device)
}

/// The floating-point type of the reference models' weights and activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FloatType {
    /// 32-bit floats: the same answers as transformers (on a GPU too, with TF32 off).
    #[default]
    F32,
    /// bfloat16 weights and activations (GPU only); LayerNorm and softmax run in f32.
    Bf16,
    /// IEEE half precision (GPU only); LayerNorm and softmax run in f32.
    F16,
}

impl FloatType {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// Refuses reduced precision on `device` unless it is a GPU: the CPU engines run f32 (and
    /// int8), and candle's CPU kernels in bf16/f16 would be slower, not faster.
    pub fn check_device(self, device: &Device) -> Result<()> {
        if self != Self::F32 && device.is_cpu() {
            return Err(Error::InvalidInput(format!(
                "--dtype {self} runs on a GPU only (--device cuda); on the CPU bertqa runs f32, \
                 or int8 with --quantize int8"
            )));
        }
        Ok(())
    }
}

impl FromStr for FloatType {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" | "fp16" | "half" => Ok(Self::F16),
            _ => Err(Error::InvalidInput(format!(
                "unknown dtype `{text}`: write f32, bf16 or f16"
            ))),
        }
    }
}

impl fmt::Display for FloatType {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_with_their_ordinal() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "CUDA".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            " cuda:3 ".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        for bad in ["", "gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:0:1", "metal"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains("cuda:N"), "{bad}: {err}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn the_cpu_opens_everywhere() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(err.contains("built without CUDA support"), "{err}");
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[test]
    fn reduced_precision_is_refused_on_the_cpu() {
        assert!(FloatType::F32.check_device(&Device::Cpu).is_ok());
        for t in [FloatType::Bf16, FloatType::F16] {
            let err = t.check_device(&Device::Cpu).unwrap_err().to_string();
            assert!(err.contains("GPU only"), "{err}");
        }
        assert_eq!("BF16".parse::<FloatType>().unwrap(), FloatType::Bf16);
        assert_eq!("fp16".parse::<FloatType>().unwrap(), FloatType::F16);
        assert!("f64".parse::<FloatType>().is_err());
    }
}
