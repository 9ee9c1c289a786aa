"""Saliency Guided Training against literal ports of the official code's two training branches
(ayaabdelsalam91/saliency_guided_training, Scripts/interpretable.py and Helper.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from nets import PooledCNN, Recorder
from torch import nn

from sdecor.losses import SALIENCY_OF, SaliencyGuidedTraining, input_saliency
from sdecor.losses.sgt import official_mask_count

captum_attr = pytest.importorskip("captum.attr")


def _data(channels, side, n=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, side, side, generator=g)
    return images, torch.randint(0, classes, (n,), generator=g)


def mnist_branch_step(net, data, target, fraction):
    """The MNIST branch (``isMNIST``) of the official training step, literally; ``net`` ends in
    log_softmax. Returns (loss, masked inputs)."""
    net.eval()
    number_of_features = int(fraction * data.shape[1] * data.shape[2] * data.shape[3])
    data = data.clone().requires_grad_(True)
    temp = data.clone()
    grads = captum_attr.Saliency(net).attribute(data, target, abs=False).mean(1).detach().cpu().to(dtype=torch.float)
    temp = temp.view(temp.shape[0], -1).detach()
    temp_grads = grads.view(grads.shape[0], -1)
    _, indx = torch.topk(temp_grads, number_of_features, dim=1, largest=False)
    for idx in range(temp.shape[0]):
        temp[idx][indx[idx]] = data[0, 0, 0, 0]
    masked = temp.view(data.shape).detach()
    net.train()
    output = net(data)
    loss = nn.CrossEntropyLoss()(output, target)
    masked_outputs = net(masked)
    loss = loss + nn.KLDivLoss(log_target=True, reduction="batchmean")(masked_outputs, output)
    return loss, masked


def get_single_mask(percentage, fattr):
    """Helper.get_SingleMask(percentage, fattr, remove_important=False)."""
    k = max(1, int(len(fattr) * len(fattr) * percentage))
    _, i = torch.topk(fattr.flatten(), k, largest=False)
    mask = torch.zeros_like(fattr.flatten(), dtype=torch.bool)
    mask[i] = True
    return mask.reshape(fattr.shape)


def fill_single_mask_mean(input_image, mask):
    """Helper.fill_SingleMask(input_image, mask, maskType="meanMask")."""
    channels = input_image.shape[0]
    num_masks = mask.sum()
    mask = mask.repeat(channels, 1, 1)
    mean_input = input_image.mean([1, 2])
    input_image[mask] = mean_input.repeat(num_masks).reshape(num_masks, -1).T.flatten()
    return input_image


def cifar_branch_step(model, data, target, fraction):
    """The CIFAR branch of the official training step (get_SingleMask + fill_SingleMask, meanMask),
    literally; ``model`` returns logits. Returns (loss, masked inputs)."""
    model.eval()
    data = data.clone().requires_grad_(True)
    temp = data.clone()
    grads = captum_attr.Saliency(model).attribute(data, target, abs=False).mean(1).detach().cpu().to(dtype=torch.float)
    for idx in range(temp.shape[0]):
        single_mask = get_single_mask(fraction, grads[idx])
        temp[idx] = fill_single_mask_mean(temp[idx], single_mask)
    masked = temp.view(data.shape).detach()
    model.train()
    output = model(data)
    loss = nn.CrossEntropyLoss()(output, target)
    masked_outputs = F.log_softmax(model(masked), dim=1)
    loss = loss + nn.KLDivLoss(reduction="batchmean")(masked_outputs, F.softmax(output, dim=1))
    return loss, masked


def test_log_prob_saliency_is_the_gradient_of_the_log_probability():
    torch.manual_seed(0)
    model = PooledCNN(channels=2).eval()
    images, labels = _data(2, 5)
    x = images.clone().requires_grad_(True)
    torch.log_softmax(model(x), 1).gather(1, labels[:, None]).sum().backward()
    torch.testing.assert_close(input_saliency(model, images, labels, saliency_of="log_prob"), x.grad.mean(1, True))
    # on a network that ends in log_softmax both settings agree (log_softmax is idempotent)
    with_log_softmax = nn.Sequential(model, nn.LogSoftmax(dim=1))
    torch.testing.assert_close(
        input_saliency(with_log_softmax, images, labels), input_saliency(model, images, labels, saliency_of="log_prob")
    )
    assert SALIENCY_OF == ("logit", "log_prob")
    with pytest.raises(ValueError, match="saliency_of"):
        SaliencyGuidedTraining(saliency_of="prob")


@pytest.mark.parametrize("fraction", [0.29, 0.5, 0.1])
def test_log_prob_setting_is_the_official_mnist_branch(fraction):
    """Same masked batch and loss as the MNIST branch on the same network with log_softmax appended;
    10 x 10 images: fraction 0.29 masks int(0.29 * 1 * 10 * 10) = 29 pixels there (floor(0.29 * 100) = 28)."""
    torch.manual_seed(0)
    model = PooledCNN(channels=1)
    images, labels = _data(1, 10)
    port_net = nn.Sequential(copy.deepcopy(model), nn.LogSoftmax(dim=1))
    port_loss, port_masked = mnist_branch_step(port_net, images, labels, fraction)
    recorder = Recorder(copy.deepcopy(model)).train()
    objective = SaliencyGuidedTraining(mask_fraction=fraction, fill=float(images[0, 0, 0, 0]), saliency_of="log_prob")
    loss, _ = objective(recorder, images, labels)
    torch.testing.assert_close(recorder.calls[2], port_masked)
    torch.testing.assert_close(loss, port_loss, rtol=1e-5, atol=1e-6)
    counts = (port_masked != images).flatten(1).sum(1)
    assert (counts == int(fraction * 1 * 10 * 10)).all()


@pytest.mark.parametrize("fraction", [0.3, 0.1, 0.001])
def test_logit_setting_is_the_official_cifar_branch(fraction):
    """Same masked batch (mean fill) and loss as the CIFAR branch; fraction 0.001 of 64 pixels
    masks max(1, 0) = 1 pixel there, as here."""
    torch.manual_seed(0)
    model = PooledCNN(channels=3)
    images, labels = _data(3, 8)
    port_loss, port_masked = cifar_branch_step(copy.deepcopy(model), images, labels, fraction)
    recorder = Recorder(copy.deepcopy(model)).train()
    loss, _ = SaliencyGuidedTraining(mask_fraction=fraction, fill="mean")(recorder, images, labels)
    torch.testing.assert_close(recorder.calls[2], port_masked)
    torch.testing.assert_close(loss, port_loss, rtol=1e-5, atol=1e-6)
    assert ((port_masked != images).any(1).flatten(1).sum(1) == max(1, int(64 * fraction))).all()


def test_the_two_settings_mask_different_pixels_on_a_logits_model():
    torch.manual_seed(0)
    model = PooledCNN(channels=1, classes=10, width=8)
    images, labels = _data(1, 12, n=16, classes=10)
    masks = {}
    for of in SALIENCY_OF:
        recorder = Recorder(model).train()
        SaliencyGuidedTraining(mask_fraction=0.5, fill=100.0, saliency_of=of)(recorder, images, labels)
        masks[of] = recorder.calls[2] == 100.0
    assert masks["logit"].sum() == masks["log_prob"].sum() == 16 * 72
    differ = (masks["logit"] & ~masks["log_prob"]).flatten(1).sum(1) / 72
    assert differ.mean() > 0.05, differ


def test_official_mask_counts():
    assert official_mask_count(0.29, (2, 1, 10, 10), "log_prob") == 29
    assert official_mask_count(0.29, (2, 1, 10, 10), "logit") == 28
    assert official_mask_count(0.005, (2, 1, 10, 10), "log_prob") == 0
    assert official_mask_count(0.005, (2, 3, 10, 10), "logit") == 1
    assert official_mask_count(0.1, (2, 3, 32, 32), "logit") == 102
    assert official_mask_count(0.5, (2, 1, 28, 28), "log_prob") == 392
    assert official_mask_count(0.25, (2, 16), "logit") == 0.25
    assert "saliency_of='log_prob'" in repr(SaliencyGuidedTraining(saliency_of="log_prob"))
