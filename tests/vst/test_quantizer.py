import torch
import torch.nn.functional as F

from vst.quantizer import VectorQuantizer


def test_straight_through_gradient_reaches_the_input():
    vq = VectorQuantizer(8, 4).eval()
    z = torch.randn(5, 4, requires_grad=True)
    q, ids, dist, _ = vq(z)
    zn = F.normalize(z, dim=-1)
    assert torch.allclose(q, vq.codebook[ids], atol=1e-6)  # the forward value is the code
    target = torch.randn(5, 4)
    (q * target).sum().backward()
    # d/dz of sum(q * target) with q = zn + sg(code - zn) equals d/dz of sum(zn * target)
    z2 = z.detach().clone().requires_grad_(True)
    (F.normalize(z2, dim=-1) * target).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6) and z.grad.abs().sum() > 0
    assert torch.allclose(dist, 1 - (zn * vq.codebook[ids]).sum(-1), atol=1e-6)


def test_ema_update_pulls_codes_towards_their_vectors():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 3, decay=0.5).train()
    vq.initialized.fill_(True)
    target = F.normalize(torch.tensor([[1.0, 0.2, 0.0]]), dim=-1)
    _, ids, _, _ = vq(target.repeat(16, 1))
    code = int(ids[0])
    before = float((vq.codebook[code] * target[0]).sum())
    for _ in range(5):
        vq(target.repeat(16, 1))
    after = float((vq.codebook[code] * target[0]).sum())
    assert after > before and after > 0.99


def test_dead_codes_restart_on_live_data():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3, decay=0.5, dead_after=0.1).train()
    vq.initialized.fill_(True)
    data = F.normalize(torch.randn(64, 3) + torch.tensor([5.0, 0, 0]), dim=-1)  # one tight cluster
    for _ in range(10):
        vq(data)
    assert int(vq.restarts) > 0
    # restarted codes now sit on the data, so more than one code gets used
    _, ids, _, _ = vq.eval()(data)
    used, perplexity = vq.usage(ids)
    assert used > 1 / 16 and perplexity > 1.0


def test_data_dependent_initialisation():
    vq = VectorQuantizer(8, 3).train()
    data = F.normalize(torch.randn(32, 3), dim=-1)
    vq(data)
    assert bool(vq.initialized)
    sims = (vq.codebook @ data.t()).max(dim=1).values
    assert (sims > 0.9).all()
