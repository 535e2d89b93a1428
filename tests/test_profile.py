"""Profiling: MACs and parameters against hand computation and published counts, the skipped-operator list,
ONNX export + checker + parity for every kind of model compact makes, interleaved timing, the command."""

from __future__ import annotations

import copy
import json
import sys
import time

import pytest
import torch
from torch import nn

from compact import attach_exits, create_model
from compact.cli import main
from compact.engine import export_output
from compact.errors import CompactError
from compact.exits.standalone import extract_exit
from compact.modelfile import ModelInfo, save_model
from compact.profile import conv_linear_macs, count, time_interleaved
from compact.profile.onnx_export import export_onnx, ort_session, parity
from compact.prune import PRUNERS, PruneSettings, prune_layers


class Tiny(nn.Module):
    """conv 1->4 (3x3, pad 1) -> BN -> ReLU, a residual add, global pooling, linear 4->3."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = h + self.conv2(h)
        return self.fc(h.mean((2, 3)))


def test_tiny_net_counts_by_hand():
    c = count(Tiny(), (1, 5, 5))
    conv = 5 * 5 * 4 * (1 * 3 * 3)  # output elements x (in/groups * kh * kw)
    conv2 = 5 * 5 * 4 * 4
    linear = 4 * 3
    assert c.macs_conv_linear == conv + conv2 + linear == conv_linear_macs(Tiny(), (1, 5, 5))
    assert c.params == 36 + 8 + (16 + 4) + (12 + 3)
    assert c.macs >= c.macs_conv_linear  # fvcore's total adds the normalisation it counts
    assert "aten::add" in c.skipped_ops  # the residual addition is not counted, and says so


class Idioms(nn.Module):
    """Matrix products that no Conv/Linear module holds: a bare weight through F.linear, ``@`` and einsum,
    fused attention, nn.MultiheadAttention (batch-first), and a transposed and a depthwise convolution."""

    def __init__(self, d: int = 8, heads: int = 2):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, d))
        self.mha = nn.MultiheadAttention(d, heads, batch_first=True)
        self.up = nn.ConvTranspose2d(d, 4, 2, stride=2)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):  # x: (1, d, 2, 3): six tokens of width d
        t = x.flatten(2).transpose(1, 2)  # (1, 6, d)
        t = nn.functional.linear(t, self.w)
        t = t + (t @ self.w) + torch.einsum("bld,de->ble", t, self.w)
        q = t.reshape(1, 6, 2, 4).transpose(1, 2)  # two heads of width 4
        t = t + nn.functional.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(1, 6, 8)
        t = t + self.mha(t, t, t, need_weights=False)[0]
        return self.dw(self.up(t.transpose(1, 2).reshape(1, 8, 2, 3)))


def _idioms_by_hand(tokens: int = 6, d: int = 8) -> int:
    products = 3 * tokens * d * d  # F.linear, @ and einsum
    sdpa = 2 * (2 * tokens * tokens * 4)  # two heads: scores and values, tokens x tokens x 4 each
    mha = 4 * tokens * d * d + 2 * tokens * tokens * d  # q, k, v and output projections; attention
    up = (2 * 3) * 4 * (2 * 2)  # transposed: each input position spreads to out_channels x 2 x 2
    dw = (4 * 4 * 6) * (1 * 3 * 3)  # depthwise: one input channel per output
    return products + sdpa + mha + up * d + dw


def test_matrix_products_outside_modules_and_fused_attention_count_by_hand():
    torch.manual_seed(0)
    model = Idioms().eval()
    want = _idioms_by_hand()
    assert conv_linear_macs(model, (8, 2, 3)) == want  # (the eval, no-grad path: MHA's fused fast path)
    assert count(model, (8, 2, 3)).macs_conv_linear == want
    with torch.enable_grad():  # (with grad, MHA runs its projections and SDPA one by one)
        assert count(model, (8, 2, 3)).macs_conv_linear == want


def test_a_vision_transformer_counts_as_its_architecture_says():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10).eval()
    tokens, d, depth = (64 // 16) ** 2 + 1, 192, 12
    block = 4 * tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * 4 * d  # attention and MLP
    want = depth * block + (64 // 16) ** 2 * d * (3 * 16 * 16) + d * 10  # blocks, patch embedding, classifier
    assert conv_linear_macs(model, (3, 64, 64)) == want == count(model, (3, 64, 64)).macs_conv_linear


class Products(nn.Module):
    """Matrix products of every rank and form that models write outside ``nn.Linear``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.v = nn.Parameter(torch.randn(8))
        self.w = nn.Parameter(torch.randn(4, 8, 10))
        self.a = nn.Parameter(torch.randn(7, 11, 13))
        self.b = nn.Parameter(torch.randn(7, 13, 17))

    def forward(self, x):
        f = self.conv(x).mean((2, 3))  # (1, 8)
        mv = f @ self.v  # a 1-D operand: aten.mv
        broadcast = (f @ self.w).sum(0)  # the batch comes from the second operand: 4 x (1 x 8 x 10)
        chain = torch.einsum("bi,ki,kj->bj", f, self.w[0].T, self.w[1].T[:, :3])  # three operands
        big = torch.einsum("bij,bjk->bik", self.a, self.b)  # 17,017 MACs: more digits than numpy prints
        fused = torch.baddbmm(big, self.a, self.b).sum() + torch.addbmm(big[0], self.a, self.b).sum()
        dots = torch.dot(self.v, self.v) + torch.vdot(self.v, self.v) + torch.addmv(self.v, self.w[0], self.w[1, 0])
        tensordot = torch.tensordot(f, self.w, dims=([1], [1]))  # (1, 4, 10): 1 x 8 x 40
        inner = torch.inner(f, self.w[0].T)  # (1, 10): 1 x 8 x 10
        multi = torch.linalg.multi_dot([f, self.w[0], self.w[1].T])  # (1 x 8 x 10) then (1 x 10 x 8)
        bilinear = nn.functional.bilinear(f, f, self.w[:, :, :8])  # 4 outputs x 8 x 8
        others = tensordot.sum() + inner.sum() + multi.sum() + bilinear.sum()
        return broadcast + mv[:, None] + chain.sum() + fused + dots.sum() + others


def test_matrix_products_of_every_rank_count_by_hand_in_both_counters():
    """1-D operands, a batch broadcast from the second operand, einsum with three operands, fused products
    with a bias, tensordot, inner, multi_dot and bilinear: fvcore's own matmul handle failed on the first
    (IndexError) and left out the batch of the second, its einsum handle rounded to numpy's four printed
    digits (17,015 for 17,017), it skipped the others, and the ATen counter had no formula for bilinear."""
    conv = (7 * 7 * 8) * (3 * 3 * 3)
    matmuls = 8 + 4 * 8 * 10  # mv; the broadcast batch of 4
    chain = 10 * 8 + 10 * 3  # torch contracts bi,ki -> bk (1 x 10 x 8), then bk,kj -> bj (1 x 10 x 3)
    big = 7 * 11 * 13 * 17
    fused = 2 * big  # baddbmm and addbmm: the products of bmm; the bias and the batch sum are additions
    dots = 8 + 8 + 8 * 10  # dot, vdot, and addmv's (8 x 10) @ (10,)
    others = 8 * 40 + 8 * 10 + (8 * 10 + 10 * 8) + 4 * 8 * 8  # tensordot, inner, multi_dot, bilinear
    want = conv + matmuls + chain + big + fused + dots + others
    model = Products().eval()
    assert conv_linear_macs(model, (3, 9, 9)) == want
    counts = count(model, (3, 9, 9))
    assert counts.macs_conv_linear == want
    products = ("mv", "dot", "mm", "matmul", "einsum", "inner", "bilinear")
    assert not {op for op in counts.skipped_ops if any(k in op for k in products)}


def test_an_lstm_network_counts_its_recurrent_layers_as_its_architecture_says():
    """timm's Sequencer2D-S mixes tokens with bidirectional LSTMs along rows and columns. On CPU they run as
    oneDNN's fused layer, which torch's FlopCounterMode does not count either; compact's count exceeds it by
    exactly the LSTMs' hand count (before, both counters agreed with FlopCounterMode, 225M MACs low)."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("sequencer2d_s", num_classes=10).eval()
    size = (3, 64, 64)
    with FlopCounterMode(display=False) as reference, torch.no_grad():
        model(torch.zeros(1, *size))
    stages = [(4, 192, 48, 9 * 9), (3, 384, 96, 4 * 4), (8, 384, 96, 4 * 4), (3, 384, 96, 4 * 4)]  # 64 px: 9x9, 4x4
    # per block: a vertical and a horizontal bidirectional LSTM, each step of each direction costing 4H x (C + H)
    lstm = sum(blocks * 2 * 2 * tokens * 4 * hidden * (dim + hidden) for blocks, dim, hidden, tokens in stages)
    assert lstm == 224_870_400
    macs = conv_linear_macs(model, size)
    assert macs == count(model, size).macs_conv_linear == reference.get_total_flops() // 2 + lstm


def test_a_product_the_counter_cannot_count_is_refused_by_name():
    class TimeBatchConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 4, 4))
            self.b = nn.Parameter(torch.zeros(4))

        def forward(self, x):
            return torch.conv_tbc(x.flatten(2).permute(2, 0, 1), self.w, self.b)

    with pytest.raises(
        CompactError, match=r"cannot count the MACs of aten\.conv_tbc in TimeBatchConv: .* leave it out"
    ):
        conv_linear_macs(TimeBatchConv(), (4, 1, 6))


class _Prototypes(nn.Module):
    """Distances of every pixel's features to learnt prototypes, as metric-learning heads compute them."""

    def __init__(self, p: float):
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(40, 8))
        self.p = p

    def forward(self, x):
        return torch.cdist(x.flatten(2).transpose(1, 2), self.prototypes.unsqueeze(0), p=self.p)


@pytest.mark.parametrize("p", [2.0, 1.0], ids=["euclidean-kernel", "cdist-kernel"])
def test_distances_count_one_mac_per_feature_of_each_pair_in_both_counters(p):
    """``cdist`` runs as ``_euclidean_dist`` (p = 2) or ``_cdist_forward`` (other p); both used to count
    zero in the ATen counter, and fvcore skipped ``aten::cdist``."""
    size = (8, 5, 6)  # 30 pixels of 8 features against 40 prototypes
    c = count(_Prototypes(p), size)
    assert conv_linear_macs(_Prototypes(p), size) == c.macs_conv_linear == c.macs == 30 * 40 * 8
    assert c.skipped_ops == {}


def test_an_fft_is_refused_by_the_pruning_counter_never_counted_as_zero():
    class GlobalFilter(nn.Module):  # GFNet's token mixer: a learnt filter applied in the frequency domain
        def __init__(self):
            super().__init__()
            self.filter = nn.Parameter(torch.randn(4, 6, 4, 2))

        def forward(self, x):
            spectrum = torch.fft.rfft2(x) * torch.view_as_complex(self.filter)
            return torch.fft.irfft2(spectrum, s=x.shape[-2:])

    with pytest.raises(CompactError, match=r"cannot count the MACs of aten\._fft_c2r, aten\._fft_r2c in GlobalFilter"):
        conv_linear_macs(GlobalFilter(), (4, 6, 6))
    assert set(count(GlobalFilter(), (4, 6, 6)).skipped_ops) >= {"aten::fft_rfft2", "aten::fft_irfft2"}


@pytest.mark.parametrize(
    "arch, macs, params", [("cifar_resnet56", 125.5e6, 0.85e6), ("cifar_resnet110", 252.9e6, 1.73e6)]
)
def test_published_resnet_counts(arch, macs, params):
    c = count(create_model(arch), (3, 32, 32))
    assert c.macs_conv_linear == pytest.approx(macs, rel=0.01)
    assert c.params == pytest.approx(params, rel=0.01)
    assert set(c.skipped_ops) == {"aten::add", "aten::pad"}  # shortcut additions and option-A padding


def _exit_model():
    torch.manual_seed(0)
    net = attach_exits(create_model("cifar_resnet20", in_chans=1), 3, input_size=(1, 28, 28)).eval()
    return extract_exit(net, 1)


def _pruned():
    model = create_model("cifar_resnet20", shortcut="B").eval()
    return prune_layers(
        model,
        (3, 32, 32),
        PRUNERS.get("fpgm"),
        {"layer2.0.conv1": 0.5, "layer3.1.conv1": 0.25},
        PruneSettings(round_to=None),
    )


@pytest.mark.parametrize(
    "make, size",
    [
        (lambda: create_model("cifar_resnet20"), (3, 32, 32)),
        (_exit_model, (1, 28, 28)),
        (_pruned, (3, 32, 32)),
        (lambda: create_model("timm:resnet18"), (3, 32, 32)),
        (lambda: create_model("torchvision:mobilenet_v2"), (3, 32, 32)),
    ],
    ids=["cifar_resnet20", "exported-exit", "pruned", "timm-resnet18", "torchvision-mobilenet_v2"],
)
def test_onnx_export_checker_and_parity(make, size, tmp_path):
    model = make().eval()
    path = export_onnx(model, size, tmp_path / "m.onnx")
    session = ort_session(path, threads=1)
    assert parity(model, session, size, batch=3) < 1e-4
    assert parity(model, session, size, batch=1) < 1e-4  # the batch axis is dynamic


def test_onnx_export_failure_names_the_problem(tmp_path):
    class Inverse(nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x[:, 0] + torch.eye(3))

    with pytest.raises(CompactError, match="ONNX cannot export Inverse: .*linalg_inv"):
        export_onnx(Inverse(), (1, 3, 3), tmp_path / "inv.onnx")
    assert not (tmp_path / "inv.onnx").exists()


class _CausalFlag(nn.Module):
    """Attention whose ``is_causal`` flag is passed down between modules, as timm's EVA-02 does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def attend(self, tokens: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(tokens, tokens, tokens, is_causal=is_causal)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        return self.fc(self.attend(x.flatten(2).transpose(1, 2), is_causal=is_causal).mean(1))


def test_a_network_the_exporter_cannot_trace_eagerly_is_exported_from_its_fx_graph(tmp_path):
    """The TorchScript exporter hands a module's bool argument on as a tensor, which attention refuses
    (``compact profile --onnx`` on EVA-02's final output failed so); its FX graph holds the default as a
    constant and exports, with parity against the eager module."""
    import warnings

    model = _CausalFlag().eval()
    with pytest.raises(Exception, match="is_causal' must be bool, not Tensor"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 6, 4, 4),), str(tmp_path / "eager.onnx"), dynamo=False)
    session = ort_session(export_onnx(model, (6, 4, 4), tmp_path / "m.onnx"), threads=1)
    assert parity(model, session, (6, 4, 4), batch=3) < 1e-6
    x = torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        assert session.run(None, {"input": x.numpy()})[0] == pytest.approx(model(x).numpy(), abs=1e-6)


def test_interleaved_timing_orders_and_spreads():
    slow = lambda: time.sleep(0.004)  # noqa: E731
    fast = lambda: None  # noqa: E731
    t = time_interleaved({"slow": slow, "fast": fast}, rounds=5, repeats=2, warmup=1)
    assert t["slow"].median_ms > 3.5 and t["fast"].median_ms < 1
    assert t["slow"].p10_ms <= t["slow"].median_ms <= t["slow"].p90_ms and len(t["slow"].samples_ms) == 5


def test_interleaved_timing_settles_and_primes_before_each_block():
    # a candidate whose first call after an idle spell is slow (a pool of threads waking up); each block of
    # timed calls follows another candidate's block
    last = [0.0]

    def cold_start():
        if time.perf_counter() - last[0] > 0.002:
            time.sleep(0.006)
        last[0] = time.perf_counter()

    other = lambda: time.sleep(0.003)  # noqa: E731
    primed = time_interleaved({"cold": cold_start, "other": other}, rounds=5, repeats=2, warmup=1, settle_ms=5)
    assert primed["cold"].median_ms < 1.5  # the untimed call after the pause took the wake-up
    raw = time_interleaved({"cold": cold_start, "other": other}, rounds=5, repeats=2, warmup=1, settle_ms=0)
    assert raw["cold"].median_ms > 2.5  # back to back, the first timed call of every block wakes it
    with pytest.raises(ValueError, match="settle_ms"):
        time_interleaved({"cold": cold_start}, settle_ms=-1)


def test_each_runtime_is_timed_in_its_own_interleaved_session(monkeypatch):
    import compact.profile.profiler as profiler
    from compact.profile.profiler import architecture_target, profile_models

    sessions = []
    real = profiler.time_interleaved

    def spy(candidates, **kw):
        sessions.append(sorted(candidates))
        return real(candidates, **kw)

    monkeypatch.setattr(profiler, "time_interleaved", spy)
    targets = [architecture_target("cifar_resnet20", (1, 8, 8)), architecture_target("cifar_resnet32", (1, 8, 8))]
    profs = profile_models(targets, onnx=True, batches=(1, 2), rounds=1, repeats=1)
    assert sessions == [
        ["0|onnxruntime|1", "0|onnxruntime|2", "1|onnxruntime|1", "1|onnxruntime|2"],
        ["0|pytorch|1", "0|pytorch|2", "1|pytorch|1", "1|pytorch|2"],
    ]
    for prof in profs:
        assert set(prof["latency_ms"]) == {"onnxruntime", "pytorch"}
        assert set(prof["latency_ms"]["pytorch"]) == {"1", "2"}
        assert "own interleaved session" in prof["settings"]["timing"]


def test_profile_table_keeps_columns_apart_for_tens_of_billions_of_macs(capsys):
    # ResNet-20 at 1024 px: 42G MACs, 14+ characters with separators; the columns once ran together
    assert main(["profile", "cifar_resnet20", "--input-size", "3,1024,1024", "--no-latency", "--no-store"]) == 0
    head, row = capsys.readouterr().out.splitlines()[:2]
    name, params, macs, conv = row.split()
    assert head.split()[:3] == ["model", "params", "MACs"] and name == "cifar_resnet20" and params == "269,722"
    assert int(macs.replace(",", "")) > 4e10 and int(conv.replace(",", "")) < int(macs.replace(",", ""))


def test_profile_command_writes_json_next_to_the_model(tmp_path, capsys):
    torch.manual_seed(0)
    net = attach_exits(create_model("cifar_resnet20", in_chans=1), 3, input_size=(1, 28, 28)).eval()
    info = ModelInfo(
        "cifar_resnet20", 10, 1, [1, 28, 28], kind="multi-exit", exit_nodes=net.exit_nodes, head=net.head_type
    )
    save_model(net, tmp_path / "net.safetensors", info)
    export_output(net, info, 0, tmp_path / "exit0.safetensors")
    argv = [
        "profile",
        str(tmp_path / "exit0.safetensors"),
        str(tmp_path / "net.safetensors"),
        "--onnx",
        "--batch",
        "1,2",
        "--rounds",
        "2",
        "--repeats",
        "1",
        "--json",
        str(tmp_path / "all.json"),
    ]
    assert main(argv) == 0
    prof = json.loads((tmp_path / "exit0.profile.json").read_text())
    for key in ("params", "macs", "macs_conv_linear", "skipped_ops", "onnx", "latency_ms", "settings"):
        assert key in prof
    assert prof["onnx"]["parity_max_abs"] < 1e-4
    assert set(prof["latency_ms"]) == {"onnxruntime", "pytorch"} and set(prof["latency_ms"]["pytorch"]) == {"1", "2"}
    assert prof["params"] == net.output_param_counts()[0]
    full = json.loads((tmp_path / "net.profile.json").read_text())  # a multi-exit file: its final output
    assert full["params"] == net.output_param_counts()[-1] and full["output"] == 2
    assert len(json.loads((tmp_path / "all.json").read_text())) == 2
    out = capsys.readouterr().out
    assert "exit0.safetensors" in out and "ORT_ENABLE_ALL" in out

    assert main(["profile", str(tmp_path / "net.safetensors"), "--exit", "1", "--no-latency"]) == 0
    assert json.loads((tmp_path / "net-exit1.profile.json").read_text())["params"] == net.output_param_counts()[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "0"], "expected one or more positive integers"),
        (["--exit", "7"], "output index 7 does not exist"),
    ],
)
def test_profile_bad_input(argv, message, tmp_path, capsys):
    net = attach_exits(create_model("cifar_resnet20", in_chans=1), 2, input_size=(1, 28, 28)).eval()
    save_model(
        net,
        tmp_path / "net.safetensors",
        ModelInfo(
            "cifar_resnet20", 10, 1, [1, 28, 28], kind="multi-exit", exit_nodes=net.exit_nodes, head=net.head_type
        ),
    )
    try:
        code = main(["profile", str(tmp_path / "net.safetensors"), *argv, "--no-store"])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_profile_refuses_non_models_and_missing_onnxruntime(tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.safetensors").write_text("not a model")
    assert main(["profile", str(tmp_path / "notes.safetensors")]) == 2
    assert "not a readable compact model file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were not installed
    model = copy.deepcopy(create_model("cifar_resnet20")).eval()
    path = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx")
    with pytest.raises(CompactError, match="onnxruntime is not installed"):
        ort_session(path)


def test_profile_takes_architecture_names(tmp_path, capsys):
    """``compact profile NAME``: a freshly built architecture, counted like a model file; several are timed
    interleaved; nothing is stored beside a file that does not exist."""
    out = tmp_path / "p.json"
    argv = ["profile", "cifar_resnet56", "cifar_resnet20", "--input-size", "3,32,32", "--no-latency"]
    argv += ["--json", str(out)]
    assert main(argv) == 0
    profiles = json.loads(out.read_text())
    assert [p["model"] for p in profiles] == ["cifar_resnet56", "cifar_resnet20"]
    assert (profiles[0]["macs_conv_linear"], profiles[0]["params"]) == (125_485_696, 853_018)  # issue 5 figures
    assert profiles[0]["source"] == "initialisation"
    assert main(["profile", "cifar_resnet20", "--input-size", "1,28,28", "--model-arg", "shortcut=B", "--no-latency",
                 "--num-classes", "7"]) == 0  # fmt: skip
    assert "cifar_resnet20" in capsys.readouterr().out
    assert main(["profile", "cifar_resnet20", "--model-arg", "pretrained=1", "--no-latency"]) == 2


def test_trivial_onnx_parity_is_flagged():
    from compact.profile.profiler import Target, profile_models

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x.flatten(1)[:, :4] * 0)

    prof = profile_models([Target("const", Constant().eval(), [1, 2, 2], None, {})], onnx=True, latency=False)[0]
    assert prof["onnx"]["parity_max_abs"] == 0 and "does not depend on its input" in prof["warnings"][0]
    net = create_model("cifar_resnet20").eval()
    assert "warnings" not in profile_models([Target("r20", net, [3, 32, 32], None, {})], onnx=True, latency=False)[0]


def test_reparameterizable_networks_are_profiled_in_their_deployed_form(tmp_path):
    """MobileOne's training-time branches fold into single convolutions for inference; profiled as trained,
    its exits and network counted about four times the deployed parameters (without the classifier)."""
    from timm.utils.model import reparameterize_model

    from compact.profile.profiler import architecture_target, load_target, profile_models

    # published (Vasu et al., MobileOne, CVPR 2023, Table 8): S0 has 2.1M parameters and 275M MACs at 224 px
    (prof,) = profile_models([architecture_target("timm:mobileone_s0", (3, 224, 224), 1000)], latency=False)
    assert prof["params"] == pytest.approx(2.1e6, rel=0.02) and prof["macs"] == pytest.approx(275e6, rel=0.01)
    assert prof["inference_form"]["params_as_trained"] > 2 * prof["params"]
    assert prof["inference_form"]["max_relative_diff"] < 1e-5

    torch.manual_seed(0)
    net = attach_exits(create_model("timm:mobileone_s0", num_classes=10), 3, input_size=(3, 32, 32)).eval()
    info = ModelInfo(
        "timm:mobileone_s0", 10, 3, [3, 32, 32], kind="multi-exit", exit_nodes=net.exit_nodes, head=net.head_type
    )
    save_model(net, tmp_path / "net.safetensors", info)
    export_output(net, info, 0, tmp_path / "exit0.safetensors")
    node = net.exit_nodes[0]
    assert node == "stages.1"
    # by hand: the folded backbone's stem and first two stages, plus the exit's head
    folded = reparameterize_model(net.backbone)
    expected = sum(p.numel() for m in (folded.stem, folded.stages[0], folded.stages[1]) for p in m.parameters())
    expected += sum(p.numel() for p in net.heads[0].parameters())
    from_run, from_file = profile_models(
        [load_target(tmp_path / "net.safetensors", "0"), load_target(tmp_path / "exit0.safetensors")], latency=False
    )
    for p in (from_run, from_file):
        assert p["params"] == expected < net.output_param_counts()[0] == p["inference_form"]["params_as_trained"]
    assert from_run["macs"] == from_file["macs"]
    # the cascade is cut from the folded network too: its static exit costs what the exit's profile says
    from compact.cascade.export import export_cascade

    manifest = export_cascade(net, info, tmp_path / "cascade")
    assert manifest["static"][0]["macs"]["total"] == from_run["macs"]
    assert manifest["inference_form"]["params_as_trained"] == sum(p.numel() for p in net.parameters())

    (plain,) = profile_models([architecture_target("cifar_resnet20", (3, 32, 32))], latency=False)
    assert "inference_form" not in plain and plain["params"] == pytest.approx(0.27e6, rel=0.01)


class Recurrent(nn.Module):
    """A convolutional front end read as a sequence by every recurrent layer torch has: a two-layer
    bidirectional LSTM (oneDNN's fused layer on CPU), an LSTM with a projection (torch's own loop), a GRU,
    a ReLU RNN over a packed batch, and the three cells."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
        self.proj = nn.LSTM(8, 16, proj_size=4, batch_first=True)
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.rnn = nn.RNN(8, 6, nonlinearity="relu", batch_first=True)
        self.lstm_cell, self.gru_cell, self.rnn_cell = nn.LSTMCell(8, 5), nn.GRUCell(8, 5), nn.RNNCell(8, 5)

    def forward(self, x):
        seq = self.conv(x).flatten(2).transpose(1, 2)  # (batch, 49 steps, 8)
        out = self.lstm(seq)[0][:, -1].sum() + self.proj(seq)[0][:, -1].sum() + self.gru(seq)[0][:, -1].sum()
        packed = nn.utils.rnn.pack_padded_sequence(seq.repeat(2, 1, 1), torch.tensor([49, 20]), batch_first=True)
        out = out + self.rnn(packed)[1].sum()  # 69 steps in all
        step = seq[:, 0]
        out = out + self.lstm_cell(step)[0].sum() + self.gru_cell(step).sum() + self.rnn_cell(step).sum()
        return out.expand(x.shape[0], 1)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_recurrent_layers_count_by_hand_in_both_counters():
    """oneDNN's fused LSTM layer (CPU) was counted as zero by the ATen counter, and fvcore skipped every
    recurrent operator: a recurrent classifier's MACs came out as those of its convolutions alone."""
    conv = (7 * 7 * 8) * (3 * 3 * 3)
    steps = 49
    lstm = 2 * (4 * 16 * 8 + 4 * 16 * 16) + 2 * (4 * 16 * 32 + 4 * 16 * 16)  # per step; layer 2 reads 2 x 16
    proj = 4 * 16 * 8 + 4 * 16 * 4 + 4 * 16  # input, hidden (projected to 4), projection
    gru = 3 * 12 * 8 + 3 * 12 * 12
    rnn = 69 * (6 * 8 + 6 * 6)
    cells = (4 * 5 + 3 * 5 + 5) * (8 + 5)
    want = conv + steps * (lstm + proj + gru) + rnn + cells
    model = Recurrent().eval()
    assert conv_linear_macs(model, (3, 9, 9)) == want
    counts = count(model, (3, 9, 9))
    assert counts.macs_conv_linear == want
    assert not [op for op in counts.skipped_ops if any(k in op for k in ("lstm", "gru", "rnn"))]
