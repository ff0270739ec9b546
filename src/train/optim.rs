//! AdamW, the linear warm-up/decay schedule and gradient clipping, with PyTorch's semantics
//! (`torch.optim.AdamW`, `get_linear_schedule_with_warmup`, `clip_grad_norm_`).

use candle_core::{Tensor, Var};

use crate::error::Result;

/// AdamW hyper-parameters (the learning rate comes with each step, from the schedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay, applied to parameters marked for decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Optimiser state of one parameter.
#[derive(Clone, Debug)]
pub struct ParamState {
    /// The parameter.
    pub var: Var,
    /// Whether weight decay applies (not to biases and LayerNorm weights).
    pub decay: bool,
    /// First moment (`exp_avg`).
    pub m: Tensor,
    /// Second moment (`exp_avg_sq`).
    pub v: Tensor,
    /// Steps taken for this parameter (PyTorch counts per parameter).
    pub step: u64,
}

/// AdamW with decoupled weight decay and bias correction, as `torch.optim.AdamW`.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Per-parameter state, in parameter order.
    pub states: Vec<ParamState>,
    /// Hyper-parameters.
    pub config: AdamWConfig,
}

impl AdamW {
    /// Fresh state (zero moments) for `params` given as `(var, decay)`.
    pub fn new(params: impl IntoIterator<Item = (Var, bool)>, config: AdamWConfig) -> Result<Self> {
        let states = params
            .into_iter()
            .map(|(var, decay)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(ParamState {
                    m: zeros.clone(),
                    v: zeros,
                    var,
                    decay,
                    step: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { states, config })
    }

    /// One update with learning rate `lr`; `grads[i]` is the gradient of parameter `i`
    /// (`None`: the parameter is left untouched, as PyTorch skips parameters without `.grad`).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        let c = self.config;
        for (state, grad) in self.states.iter_mut().zip(grads) {
            let Some(g) = grad else { continue };
            state.step += 1;
            let mut p = state.var.as_tensor().detach();
            if state.decay && c.weight_decay != 0.0 {
                p = p.affine(1.0 - lr * c.weight_decay, 0.0)?;
            }
            // exp_avg.lerp_(grad, 1 - β₁); exp_avg_sq.mul_(β₂).addcmul_(grad, grad, 1 - β₂)
            state.m = ((g - &state.m)?.affine(1.0 - c.beta1, 0.0)? + &state.m)?;
            state.v = (state.v.affine(c.beta2, 0.0)? + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
            let bias_correction1 = 1.0 - c.beta1.powi(state.step as i32);
            let bias_correction2 = 1.0 - c.beta2.powi(state.step as i32);
            let step_size = lr / bias_correction1;
            let denom = (state.v.sqrt()? / bias_correction2.sqrt())?.affine(1.0, c.eps)?;
            let update = (&state.m / denom)?.affine(-step_size, 0.0)?;
            state.var.set(&(p + update)?)?;
        }
        Ok(())
    }
}

/// `get_linear_schedule_with_warmup`: the learning rate rises linearly from 0 over `warmup`
/// steps, then falls linearly to 0 at `total` steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearSchedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total optimiser steps.
    pub total: usize,
}

impl LinearSchedule {
    /// Warm-up steps for a ratio of the total, as the Trainer rounds them (up).
    pub fn with_warmup_ratio(base_lr: f64, warmup_ratio: f64, total: usize) -> Self {
        Self {
            base_lr,
            warmup: (warmup_ratio * total as f64).ceil() as usize,
            total,
        }
    }

    /// Learning rate of the update that follows `step` completed updates.
    pub fn lr(&self, step: usize) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            ((self.total as f64 - step as f64)
                / (self.total.saturating_sub(self.warmup)).max(1) as f64)
                .max(0.0)
        };
        self.base_lr * factor
    }
}

/// Scales gradients in place so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, capped at 1).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sum_sq = 0f32;
    for g in grads.iter().flatten() {
        let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        sum_sq += norm * norm;
    }
    let total = sum_sq.sqrt() as f64;
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = g.affine(coef, 0.0)?;
        }
    }
    Ok(total)
}

/// transformers' rule for weight decay: none on biases nor on normalisation layers' weights.
pub fn decays(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let module = lower.rsplit_once('.').map_or("", |(m, _)| m);
    let last_module = module.rsplit('.').next().unwrap_or("");
    !(lower.contains("bias")
        || module.contains("layernorm")
        || module.contains("layer_norm")
        || module.contains("rmsnorm")
        || last_module == "norm"
        || last_module.ends_with("_norm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers() {
        let s = LinearSchedule::with_warmup_ratio(1e-4, 0.1, 95);
        assert_eq!(s.warmup, 10);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 5e-5).abs() < 1e-15);
        assert!((s.lr(10) - 1e-4).abs() < 1e-15);
        assert!((s.lr(50) - 1e-4 * 45.0 / 85.0).abs() < 1e-15);
        assert_eq!(s.lr(95), 0.0);
        assert_eq!(s.lr(100), 0.0);
        let flat = LinearSchedule::with_warmup_ratio(3e-5, 0.0, 4);
        assert_eq!(flat.lr(0), 3e-5);
        assert!((flat.lr(2) - 1.5e-5).abs() < 1e-18);
    }

    #[test]
    fn decay_rule_matches_transformers() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(decays("bert.embeddings.word_embeddings.weight"));
        assert!(decays("qa_outputs.weight"));
        assert!(!decays("qa_outputs.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(!decays(
            "distilbert.transformer.layer.0.sa_layer_norm.weight"
        ));
        assert!(!decays("bert.encoder.layer.1.output.LayerNorm.bias"));
    }

    #[test]
    fn clipping_follows_torch() {
        let dev = candle_core::Device::Cpu;
        let mut grads = vec![
            Some(Tensor::new(&[3f32, 0.0], &dev).unwrap()),
            None,
            Some(Tensor::new(&[4f32], &dev).unwrap()),
        ];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let a: Vec<f32> = grads[0].as_ref().unwrap().to_vec1().unwrap();
        let expected = 3.0 / (5.0 + 1e-6);
        assert!((a[0] as f64 - expected).abs() < 1e-6);
        // Under the limit nothing changes.
        let mut small = vec![Some(Tensor::new(&[0.3f32], &dev).unwrap())];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].as_ref().unwrap().to_vec1::<f32>().unwrap(), [0.3]);
    }

    #[test]
    fn first_adamw_step_moves_by_lr_times_sign() {
        let dev = candle_core::Device::Cpu;
        let var = Var::new(&[1f32, -2.0], &dev).unwrap();
        let mut opt = AdamW::new(
            [(var.clone(), true)],
            AdamWConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let g = Tensor::new(&[0.5f32, -0.25], &dev).unwrap();
        opt.step(&[Some(g)], 0.01).unwrap();
        let p: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        // p·(1 − lr·wd) − lr·g/(|g| + ε)
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (a, b) in p.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert_eq!(opt.states[0].step, 1);
    }
}
