"""Semantic losses: KL distillation to a frozen teacher, and the SigLIP sigmoid loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from atoken import InputError, OptionsError
from atoken.plugins.losses.distill import SemanticDistillLoss, SemanticDistillOptions
from atoken.plugins.losses.sigmoid import SigLIPSigmoidLoss, SigLIPSigmoidOptions


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------- registry
def test_losses_are_registered_with_strict_options(components) -> None:
    assert {"semantic_distill", "siglip_sigmoid"} <= set(components.losses.names())
    distill = components.losses.build("semantic_distill")
    assert isinstance(distill, SemanticDistillLoss)
    assert distill.options.temperature == 2.0 and distill.options.log_scale == 4.8438
    sig = components.losses.build("siglip_sigmoid", {"init_bias": -5})
    assert isinstance(sig, torch.nn.Module) and sig.bias.item() == -5.0
    with pytest.raises(OptionsError, match="temprature"):
        components.losses.build("semantic_distill", {"temprature": 1.0})
    with pytest.raises(OptionsError, match="temperature"):
        components.losses.build("semantic_distill", {"temperature": 0})


# ---------------------------------------------------------------------------- distillation
def _distill(temperature: float = 1.0, log_scale: float = 0.0, **kw) -> SemanticDistillLoss:
    return SemanticDistillLoss(
        SemanticDistillOptions(temperature=temperature, log_scale=log_scale, **kw)
    )


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_distill_hand_computed(temperature: float) -> None:
    # texts e0, e1; teacher sees e0, student sees e1 (scaled: normalisation must remove it).
    # p_t = softmax([1, 0] / T), p_s = softmax([0, 1] / T): KL = (1/T) * tanh(1 / (2T))
    text = torch.eye(2)
    teacher = torch.tensor([[1.0, 0.0]])
    student = torch.tensor([[0.0, 5.0]])
    loss = _distill(temperature)(student, teacher, text)
    expected = math.tanh(1 / (2 * temperature)) / temperature
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_distill_is_kl_teacher_to_student_batch_mean() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher, text = (torch.randn(n, 8, generator=g) for n in (4, 4, 6))
    loss_fn = _distill(temperature=2.0, log_scale=math.log(20.0))

    def dist(x: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).T
        return (20.0 * cos / 2.0).softmax(-1)

    p_t, p_s = dist(teacher), dist(student)
    forward_kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    reverse_kl = (p_s * (p_s.log() - p_t.log())).sum(-1).mean()
    loss = loss_fn(student, teacher, text)
    torch.testing.assert_close(loss, forward_kl, atol=1e-6, rtol=1e-5)
    assert abs(float(loss) - float(reverse_kl)) > 1e-3  # the direction is observable
    # batch mean: the loss of the batch is the mean of the per-image losses
    per_image = torch.stack(
        [loss_fn(student[i : i + 1], teacher[i : i + 1], text) for i in range(4)]
    )
    torch.testing.assert_close(loss, per_image.mean(), atol=1e-6, rtol=1e-5)


def test_distill_identical_is_zero_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(1)
    teacher, text = torch.randn(5, 16, generator=g), torch.randn(7, 16, generator=g)
    loss_fn = SemanticDistillLoss()  # release scale, T = 2
    assert float(loss_fn(teacher.clone(), teacher, text)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss_fn(3.0 * teacher, teacher, text)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(5, 16, generator=g)
    assert float(loss_fn(other, teacher, text)) > 1e-3


def test_distill_gradients_reach_only_the_student() -> None:
    g = torch.Generator().manual_seed(2)
    student = torch.randn(3, 8, generator=g, requires_grad=True)
    teacher = torch.randn(3, 8, generator=g, requires_grad=True)
    text = torch.randn(4, 8, generator=g, requires_grad=True)
    SemanticDistillLoss()(student, teacher, text).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None and text.grad is None  # frozen teacher and text tower


def test_distill_t2_scaling_and_bf16_inputs() -> None:
    g = torch.Generator().manual_seed(3)
    student, teacher, text = (torch.randn(n, 8, generator=g) for n in (2, 2, 3))
    plain = _distill(temperature=3.0, log_scale=1.0)(student, teacher, text)
    scaled = _distill(temperature=3.0, log_scale=1.0, t2_scaling=True)(student, teacher, text)
    torch.testing.assert_close(scaled, 9.0 * plain)
    low = _distill(temperature=3.0, log_scale=1.0)(student.bfloat16(), teacher, text)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, plain, atol=2e-2, rtol=2e-2)


def test_distill_rejects_mismatched_shapes() -> None:
    loss_fn = SemanticDistillLoss()
    with pytest.raises(InputError, match="dim 4 but text embeddings have dim 8"):
        loss_fn(torch.randn(2, 4), torch.randn(2, 8), torch.randn(3, 8))
    with pytest.raises(InputError, match="2 student rows but 3 teacher rows"):
        loss_fn(torch.randn(2, 8), torch.randn(3, 8), torch.randn(3, 8))
    with pytest.raises(InputError, match=r"\[rows, dim\]"):
        loss_fn(torch.randn(8), torch.randn(3, 8), torch.randn(3, 8))


# ---------------------------------------------------------------------------- SigLIP sigmoid
def test_sigmoid_init_and_learnable_parameters() -> None:
    loss_fn = SigLIPSigmoidLoss()
    names = dict(loss_fn.named_parameters())
    assert set(names) == {"log_scale", "bias"}
    assert loss_fn.log_scale.item() == pytest.approx(math.log(10))
    assert loss_fn.bias.item() == -10.0
    frozen = SigLIPSigmoidLoss(SigLIPSigmoidOptions(learnable=False))
    assert list(frozen.parameters()) == []
    assert {n for n, _ in frozen.named_buffers()} == {"log_scale", "bias"}


def test_sigmoid_hand_computed() -> None:
    x = torch.eye(2)
    loss_fn = SigLIPSigmoidLoss(SigLIPSigmoidOptions(init_log_scale=0.0, init_bias=0.0))
    # logits = I: diagonal log sigma(1), off-diagonal log sigma(-0); divided by |B| = 2
    expected = (2 * softplus(-1.0) + 2 * softplus(0.0)) / 2
    assert loss_fn(x, 4.0 * x).item() == pytest.approx(expected, rel=1e-6)
    # a non-trivial case against the formula written out pair by pair
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    loss_fn = SigLIPSigmoidLoss(SigLIPSigmoidOptions(init_log_scale=1.3, init_bias=-2.0))
    xa, yb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    total = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if i == j else -1.0
            logit = math.exp(1.3) * float(xa[i] @ yb[j]) - 2.0
            total += softplus(-z * logit)  # -log sigma(z * logit)
    assert loss_fn(a, b).item() == pytest.approx(total / 3, rel=1e-5)


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_sigmoid_scales_with_batch_as_in_the_paper(batch: int) -> None:
    # orthonormal matched pairs at init (t = 10, b = -10): positives have logit 0, negatives
    # -10. Sum over pairs / |B|  =>  log 2 + (|B| - 1) * softplus(-10): linear in |B| - 1.
    x = torch.eye(8)[:batch]
    loss = SigLIPSigmoidLoss()(x, x).item()
    assert loss == pytest.approx(math.log(2) + (batch - 1) * softplus(-10.0), rel=1e-6)


def test_sigmoid_decreases_as_matched_pairs_get_closer() -> None:
    g = torch.Generator().manual_seed(5)
    images = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    noise = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    loss_fn = SigLIPSigmoidLoss()
    losses = [
        loss_fn(images, a * images + (1 - a) * noise).item() for a in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses
    shuffled = loss_fn(images, images.roll(1, dims=0)).item()
    assert shuffled > losses[-1]


def test_sigmoid_gradients_reach_scale_bias_and_inputs() -> None:
    g = torch.Generator().manual_seed(6)
    images = torch.randn(4, 8, generator=g, requires_grad=True)
    texts = torch.randn(4, 8, generator=g, requires_grad=True)
    loss_fn = SigLIPSigmoidLoss()
    loss_fn(images, texts).backward()
    for t in (images, texts, loss_fn.log_scale, loss_fn.bias):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # at init positives sit near logit -10 (each adds about -1/|B|) and negatives near
    # sigma(-10) ~ 0: d loss / d b is about -1, pushing b up as in the paper's early training
    assert -1.0 < loss_fn.bias.grad.item() < -0.9


def test_sigmoid_rejects_unmatched_batches() -> None:
    with pytest.raises(InputError, match="matching rows"):
        SigLIPSigmoidLoss()(torch.randn(3, 8), torch.randn(4, 8))
