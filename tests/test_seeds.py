"""The seed programs (../shared/seeds/*.txt), ported by changing the import, give the mathematically right
answers (PyTorch's, where a seed's printed output is wrong) and fail clearly where the seed cannot run."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest

import eager
from eager import nn, optim, viz
from eager.nn import functional as F

# ---------------------------------------------------------------- seed 004: y = (x + w) * (w + 1)


def test_seed_graph_y_equals_x_plus_w_times_w_plus_1_gives_pytorchs_gradients():
    w = eager.tensor([1.0], requires_grad=True)
    x = eager.tensor([2.0], requires_grad=True)
    a = w + x          # torch.add(w, x)
    a.retain_grad()
    b = w + 1          # torch.add(w, 1)
    b.retain_grad()
    y = eager.mul(a, b)
    y.backward()
    assert (w.is_leaf, x.is_leaf, a.is_leaf, b.is_leaf, y.is_leaf) == (True, True, False, False, False)
    assert (w.grad.item(), x.grad.item(), a.grad.item(), b.grad.item()) == (5.0, 2.0, 2.0, 3.0)
    with pytest.warns(UserWarning, match="not a leaf Tensor"):
        assert y.grad is None
    assert w.grad_fn is None and x.grad_fn is None
    assert (a.grad_fn.name(), b.grad_fn.name(), y.grad_fn.name()) == ("AddBackward", "AddBackward", "MulBackward")


def test_seed_graph_without_retain_grad_keeps_no_intermediate_gradient():
    w = eager.tensor([1.0], requires_grad=True)
    b = w + 1
    (b * (w + 2)).backward()
    with pytest.warns(UserWarning, match="retain_grad"):
        assert b.grad is None
    assert w.grad.item() == 5.0


# ---------------------------------------------------------------- seed 003: the printed 8 and 1 are wrong


def test_seed_z_equals_2x_squared_at_3_gives_24_not_the_printed_8():
    x = eager.tensor(3.0, requires_grad=True)
    y = x * 2
    z = y ** 2
    z.backward()
    assert x.grad.item() == 24.0 and x.grad.shape == ()


def test_seed_mean_of_2_a_plus_b_gives_2_not_the_printed_1():
    a = eager.tensor(2.0, requires_grad=True)
    b = eager.tensor(3.0, requires_grad=True)
    c = a + b
    d = c * 2
    e = d.mean()
    e.backward()
    assert (a.grad.item(), b.grad.item(), e.item()) == (2.0, 2.0, 10.0)


def test_seed_make_dot_render_ports_from_torchviz(tmp_path):
    a = eager.tensor(2.0, requires_grad=True)
    b = eager.tensor(3.0, requires_grad=True)
    e = ((a + b) * 2).mean()
    dot = viz.make_dot(e)
    assert "AddBackward" in dot and "MulBackward" in dot and dot.count("f32[]") == 3
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed: make_dot(e).render(...) needs it")
    out = dot.render(str(tmp_path / "computation_graph"))
    assert out.endswith(".svg") and "<svg" in open(out).read()


class ShrinkingNet(nn.Module):
    """Seed 003's DynamicNet: Linear(64, 64), Linear(32, 32), Linear(16, 16), then Linear(8, 10)."""

    def __init__(self, input_size, output_size):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.layers = nn.ModuleList()
        for _i in range(3):
            self.layers.append(nn.Linear(input_size, input_size))
            input_size = input_size // 2
        self.final_layer = nn.Linear(input_size, output_size)

    def forward(self, x):
        for layer in self.layers:
            x = eager.relu(layer(x))
        return self.final_layer(x)


def test_seed_module_list_dynamic_net_cannot_run_and_says_why():
    model = ShrinkingNet(64, 10)
    assert "(1): Linear(in_features=32, out_features=32, bias=True)" in repr(model)
    with pytest.raises(eager.ShapeError) as info:
        model(eager.randn(1, 64))
    msg = str(info.value)
    assert "input of shape [1, 64]" in msg and "in_features=32" in msg and "weight shape [32, 32]" in msg
    assert "ShrinkingNet.layers.1: Linear(in_features=32, out_features=32" in msg


def test_seed_clip_grad_norm_on_model_parameters():
    model = nn.Linear(4, 3)
    (model(eager.randn(8, 4) * 100) ** 2).sum().backward()
    total = nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    assert total.item() > 1.0
    after = np.sqrt(sum((p.grad.numpy().astype(np.float64) ** 2).sum() for p in model.parameters()))
    assert after == pytest.approx(1.0, rel=1e-4)


# ---------------------------------------------------------------- seed 002: relu and SimpleNN


def test_seed_relu_and_my_relu_agree():
    x = eager.tensor([1.0, -2.0, 3.0])
    assert F.relu(x).tolist() == [1.0, 0.0, 3.0]
    assert eager.max(x, eager.zeros_like(x)).tolist() == [1.0, 0.0, 3.0]
    # the seed then calls y.backward() on a vector that needs no grad: PyTorch refuses, and so do we
    with pytest.raises(RuntimeError, match="does not require grad"):
        F.relu(x).backward()


class SimpleNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 10)
        self.fc2 = nn.Linear(10, 1)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def _simple_nn_losses(nn_lib, optim_lib, tensor, model, zero_grad):
    criterion = nn_lib.MSELoss()
    optimizer = optim_lib.SGD(model.parameters(), lr=0.01)
    losses = []
    for _epoch in range(100):
        inputs = tensor([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]])
        targets = tensor([[0.0], [1.0]])
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_seed_simple_nn_loop_as_written_follows_pytorch_loss_for_loss():
    # the seed never calls zero_grad, so gradients accumulate; from PyTorch's initial weights it still
    # converges, and eager follows it step by step (accumulation semantics included)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t_model = torch.nn.Sequential(torch.nn.Linear(3, 10), torch.nn.ReLU(), torch.nn.Linear(10, 1))
    model = SimpleNN()
    model.load_state_dict({k.replace("0.", "fc1.").replace("2.", "fc2."): eager.tensor(v.numpy())
                           for k, v in t_model.state_dict().items()})
    t_model.double()
    model.double()  # float64: the loss oscillates on its way down, which would amplify float32 rounding
    t_losses = _simple_nn_losses(torch.nn, torch.optim, lambda v: torch.tensor(v, dtype=torch.float64), t_model,
                                 zero_grad=False)
    losses = _simple_nn_losses(nn, optim, lambda v: eager.tensor(v, dtype=eager.float64), model, zero_grad=False)
    np.testing.assert_allclose(losses, t_losses, rtol=1e-9, atol=1e-12)
    assert losses[-1] < losses[0] / 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seed_simple_nn_mse_sgd_loop_drives_the_loss_down(seed):
    eager.manual_seed(seed)
    losses = _simple_nn_losses(nn, optim, eager.tensor, SimpleNN(), zero_grad=True)
    assert losses[-1] < losses[0] / 3 and losses[-1] < 0.15


# ---------------------------------------------------------------- seed 001: autograd, Function, nn, optim


def test_seed_two_layer_net_with_manual_updates_under_no_grad():
    eager.manual_seed(0)
    N, D_in, H, D_out = 16, 50, 20, 5
    x, y = eager.randn(N, D_in), eager.randn(N, D_out)
    w1 = eager.randn(D_in, H, requires_grad=True)
    w2 = eager.randn(H, D_out, requires_grad=True)
    learning_rate = 1e-4
    losses = []
    for _t in range(60):
        y_pred = eager.mm(eager.mm(x, w1).clamp(min=0), w2)
        loss = (y_pred - y).pow(2).sum()
        loss.backward()
        with eager.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad
            w1.grad.zero_()
            w2.grad.zero_()
        losses.append(loss.item())
    assert w1.is_leaf and w2.is_leaf and w1.requires_grad
    assert losses[-1] < losses[0] / 5


class Sigmoid(eager.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = 1.0 / (1.0 + (-x).exp())
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        return grad_y * y * (1.0 - y)


def _count_nodes(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        stack.extend(f for f, _ in fn.next_functions)
    return len(seen)


def test_seed_custom_sigmoid_function_is_one_node_with_the_right_gradient():
    x = eager.tensor([-2.0, 0.0, 1.5], dtype=eager.float64, requires_grad=True)
    y = Sigmoid.apply(x)
    assert y.grad_fn.name() == "SigmoidBackward" and _count_nodes(y) == 1
    assert y.grad_fn.next_functions == ((None, 0),) and y.grad_fn.inputs[0] is x  # straight to the leaf
    plain = 1.0 / (1.0 + (-x).exp())
    assert _count_nodes(plain) == 4  # neg, exp, add, div: what the Function avoids
    y.sum().backward()
    s = 1 / (1 + np.exp(-x.detach().numpy()))
    np.testing.assert_allclose(x.grad.numpy(), s * (1 - s), rtol=1e-14)
    assert eager.autograd.gradcheck(Sigmoid.apply, (eager.tensor([0.3, -1.2], dtype=eager.float64,
                                                                 requires_grad=True),))


class TwoLayerNet(nn.Module):
    def __init__(self, D_in, H, D_out):
        super().__init__()
        self.linear1 = nn.Linear(D_in, H)
        self.linear2 = nn.Linear(H, D_out)

    def forward(self, x):
        h_relu = self.linear1(x).clamp(min=0)
        return self.linear2(h_relu)


@pytest.mark.parametrize("style", ["sequential_manual_update", "custom_module_adam"])
def test_seed_nn_models_train_with_mse(style):
    eager.manual_seed(1)
    x, y = eager.randn(32, 10), eager.randn(32, 2)
    if style == "sequential_manual_update":
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
        optimizer = None
    else:
        model = TwoLayerNet(10, 16, 2)
        optimizer = optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _t in range(100):
        loss = F.mse_loss(model(x), y)
        first = loss.item() if first is None else first
        loss.backward()
        if optimizer is None:
            with eager.no_grad():
                for param in model.parameters():
                    param -= 0.1 * param.grad
            model.zero_grad()
        else:
            optimizer.step()
            optimizer.zero_grad()
    assert loss.item() < 0.6 * first


# ---------------------------------------------------------------- seed 000: control flow, debugging, GAN


class DynamicNet(nn.Module):
    def __init__(self, D_in, H, D_out):
        super().__init__()
        self.linear1 = nn.Linear(D_in, H)
        self.linear2 = nn.Linear(H, D_out)
        self.counter = 0

    def forward(self, x):
        self.counter += 1
        if self.counter % 2 == 0:
            h_relu = self.linear1(x).clamp(min=0)
        else:
            h_relu = self.linear1(x * 2).clamp(min=0)
        return self.linear2(h_relu)


def test_seed_call_counter_dynamic_net_runs_eagerly_and_alternates_branches():
    eager.manual_seed(0)
    model = DynamicNet(64, 32, 10)
    x = eager.randn(1, 64, requires_grad=True)  # so that the x * 2 branch is recorded as a node

    def expected(scale):
        return model.linear2(model.linear1(x * scale).clamp(min=0)).detach().numpy()
    outs = [model(x) for _ in range(4)]
    assert model.counter == 4 and outs[0].shape == (1, 10)
    for i, out in enumerate(outs):  # calls 1, 3 double the input; calls 2, 4 do not
        np.testing.assert_allclose(out.detach().numpy(), expected(2.0 if i % 2 == 0 else 1.0), rtol=1e-6)
    assert not np.allclose(outs[0].detach().numpy(), outs[1].detach().numpy())
    # the graph is rebuilt per call: the odd calls record one more op (the x * 2)
    assert _count_nodes(outs[0]) == _count_nodes(outs[1]) + 1


class DebugNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 5)
        self.fc2 = nn.Linear(5, 1)

    def forward(self, x):
        print("Input:", x)
        x = self.fc1(x)
        print("After fc1:", x)
        x = x.clamp(min=0)
        print("After ReLU:", x)
        x = self.fc2(x)
        print("Output:", x)
        return x


def test_seed_debug_prints_show_intermediate_values(capsys):
    out = DebugNet()(eager.randn(1, 10))
    text = capsys.readouterr().out
    for tag in ("Input: tensor(", "After fc1: tensor(", "After ReLU: tensor(", "Output: tensor("):
        assert tag in text
    assert "grad_fn=<LinearBackward>" in text and out.shape == (1, 1)


def _gan(lib, optim_lib, params=None):
    G = lib.Sequential(lib.Linear(4, 8), lib.ReLU(), lib.Linear(8, 2))
    D = lib.Sequential(lib.Linear(2, 8), lib.ReLU(), lib.Linear(8, 1), lib.Sigmoid())
    G.double()
    D.double()
    if params is not None:
        G.load_state_dict(params[0])
        D.load_state_dict(params[1])
    return G, D, optim_lib.Adam(G.parameters(), lr=0.01), optim_lib.Adam(D.parameters(), lr=0.01)


def _gan_epoch(G, D, g_opt, d_opt, criterion, real_data, noise, real_label, fake_label, checks=None):
    d_opt.zero_grad()
    real_output = D(real_data)
    fake_data = G(noise)
    fake_output = D(fake_data.detach())
    d_loss = criterion(real_output, real_label) + criterion(fake_output, fake_label)
    d_loss.backward()
    if checks:
        checks(G, D)
    d_opt.step()
    g_opt.zero_grad()
    fake_output = D(fake_data)
    g_loss = criterion(fake_output, real_label)
    g_loss.backward()
    g_opt.step()
    return d_loss, g_loss


def test_seed_gan_step_detach_keeps_the_generator_out_of_the_discriminator_update():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tG, tD, tg_opt, td_opt = _gan(torch.nn, torch.optim)
    to_eager = [{k: eager.tensor(v.numpy()) for k, v in m.state_dict().items()} for m in (tG, tD)]
    G, D, g_opt, d_opt = _gan(nn, optim, to_eager)
    rng = np.random.default_rng(0)
    g_before = copy.deepcopy(G.state_dict())

    g_grads_before_d_step = []

    def detached(G, D):  # after d_loss.backward(): detach() kept every gradient out of G
        now = [None if p.grad is None else p.grad.numpy().copy() for p in G.parameters()]
        for before, after in zip(g_grads_before_d_step, now):
            assert (before is None and after is None) or np.array_equal(before, after)
        assert all(p.grad is not None for p in D.parameters())

    for epoch in range(3):
        g_grads_before_d_step[:] = [None if p.grad is None else p.grad.numpy().copy() for p in G.parameters()]
        assert epoch > 0 or all(g is None for g in g_grads_before_d_step)
        real, noise = rng.standard_normal((16, 2)) + 3.0, rng.standard_normal((16, 4))
        ones, zeros = np.ones((16, 1)), np.zeros((16, 1))
        t_losses = _gan_epoch(tG, tD, tg_opt, td_opt, torch.nn.BCELoss(), *map(torch.tensor, (real, noise, ones,
                                                                                               zeros)))
        e_losses = _gan_epoch(G, D, g_opt, d_opt, nn.BCELoss(), *map(eager.tensor, (real, noise, ones, zeros)),
                              checks=detached)
        for t_loss, e_loss in zip(t_losses, e_losses):
            assert e_loss.item() == pytest.approx(t_loss.item(), rel=1e-10)
    for t_mod, e_mod in ((tG, G), (tD, D)):
        for (name, tp), ep in zip(t_mod.named_parameters(), e_mod.parameters()):
            np.testing.assert_allclose(ep.detach().numpy(), tp.detach().numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=name)
    assert any((G.state_dict()[k].numpy() != v.numpy()).any() for k, v in g_before.items())  # G did train


# ---------------------------------------------------------------- a small classifier trains with Adam


def test_spiral_classifier_reaches_over_95_percent_with_adam_on_cpu():
    from compare.demo import train_spiral_classifier
    lines = []
    result = train_spiral_classifier(steps=300, seed=0, log=lines.append)
    assert result["accuracy"] > 0.95 and result["test_accuracy"] > 0.95
    assert result["loss"] < 0.1 and result["steps"] == 300
    assert len(lines) >= 5 and lines[-1].startswith("step  300")


@pytest.mark.gpu
def test_spiral_classifier_reaches_over_95_percent_with_adam_on_cuda():
    from compare.demo import train_spiral_classifier
    result = train_spiral_classifier(steps=300, seed=0, log=lambda line: None, device="cuda")
    assert result["accuracy"] > 0.95 and result["test_accuracy"] > 0.95
