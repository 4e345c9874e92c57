"""WideResNet and the CIFAR ResNets: published parameter counts, TRADES/RobustBench key names, heads, memory formats,
and `engine.models.load` from every file it accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.checkpoint import clean_state_dict, export_model, save_checkpoint
from engine.models import build, load, model_card, parse_arch, primary_state_dict
from engine.models.heads import CIFAR10_STD, per_image_standardization
from engine.models.wideresnet import CIFAR10_MEAN

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


@pytest.mark.parametrize("name, exact, shown", [
    ("wrn-28-10", 36_479_194, "36.48 M"),  # the published WRN-28-10 count (10 classes)
    ("wrn-34-10", 46_160_474, "46.16 M"),  # the published WRN-34-10 count (TRADES)
    ("resnet-18", 11_173_962, "11.17 M"),  # the CIFAR ResNet-18 of the usual CIFAR code (kuangliu/pytorch-cifar)
    ("resnet-34", 21_282_122, "21.28 M"),
])
def test_published_parameter_counts(name, exact, shown):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build(name, 10)
    assert n_params(model) == exact
    assert millions(n_params(model)) == shown


def test_auxiliary_heads_add_exactly_a_linear_layer_each():
    with torch.device("meta"):
        base = n_params(build("wrn-28-10", 10))
        with_aux = n_params(build("wrn-28-10", 10, aux_classes=(1000, 365)))
    assert with_aux - base == (640 * 1000 + 1000) + (640 * 365 + 365)


def expected_trades_keys(depth: int, width: int) -> set[str]:
    """The state-dict keys of the TRADES / RobustBench WideResNet, written out from its layout."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    channels = [16, 16 * width, 32 * width, 64 * width]
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{s}" for s in bn}
    for b in (1, 2, 3):
        for i in range((depth - 4) // 6):
            p = f"block{b}.layer.{i}"
            keys |= {f"{p}.bn1.{s}" for s in bn} | {f"{p}.bn2.{s}" for s in bn}
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight"}
            if i == 0 and channels[b - 1] != channels[b]:
                keys.add(f"{p}.convShortcut.weight")
    return keys


@pytest.mark.parametrize("name", ["wrn-28-10", "wrn-16-1"])
def test_key_names_follow_the_trades_robustbench_wideresnet(name):
    with torch.device("meta"):
        model = build(name, 10)
    keys = set(model.state_dict())
    # mu/sigma are the normalisation buffers that make inputs [0, 1]; everything else matches.
    arch = parse_arch(name)
    assert keys - {"mu", "sigma"} == expected_trades_keys(arch.depth, arch.width)
    if name == "wrn-28-10":  # spelled out, as RobustBench checkpoints name them
        assert {"conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                "block3.layer.3.conv2.weight", "bn1.running_var", "fc.weight"} <= keys
        assert "block1.layer.1.convShortcut.weight" not in keys


def test_primary_and_auxiliary_heads_shapes():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, aux_classes=(20, 7)).eval()
    x = torch.rand(5, 3, 16, 16)
    feats = model.features(x)
    assert feats.shape == (5, 64) and model.feature_dim == 64
    assert model(x).shape == (5, 10)
    assert [head(feats).shape for head in model.aux_fc] == [(5, 20), (5, 7)]
    assert model.aux_classes == (20, 7)
    assert torch.equal(model(x), model.fc(feats))
    assert not any(k.startswith("aux_fc.") for k in primary_state_dict(model))
    assert {k for k in model.state_dict() if k.startswith("aux_fc.")} == {
        "aux_fc.0.weight", "aux_fc.0.bias", "aux_fc.1.weight", "aux_fc.1.bias"}


def test_heads_give_primary_logits_and_each_auxiliary_chunk_through_its_own_head():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, aux_classes=(20, 7)).eval()
    feats = model.features(torch.rand(9, 3, 16, 16))  # 4 primary rows, then auxiliary chunks of 3 and 2
    logits_pri, logits_aux = model.heads(feats, (3, 2))
    assert torch.equal(logits_pri, model.fc(feats))
    assert len(logits_aux) == 2
    assert torch.equal(logits_aux[0], model.aux_fc[0](feats[4:7]))
    assert torch.equal(logits_aux[1], model.aux_fc[1](feats[7:9]))
    no_aux_pri, no_aux = model.heads(feats)
    assert torch.equal(no_aux_pri, model.fc(feats)) and no_aux == []


def test_normalisation_is_inside_the_model():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    x = torch.rand(2, 3, 16, 16)
    # conv1 sees (x - mean) / std: feeding the normalised image to the stem by hand agrees.
    stem = model.conv1((x - 0.5) / 0.25)
    assert torch.allclose(model.conv1((x - model.mu) / model.sigma), stem)
    before = model(x)
    model.mu.fill_(0.0)
    assert not torch.allclose(model(x), before)


def test_channels_last_input_gives_the_nchw_output():
    torch.manual_seed(0)
    model = build("wrn-10-2", 10, aux_classes=(20,)).eval()
    x = torch.rand(4, 3, 16, 16)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (4, 10)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, dropout=0.5)
    x = torch.rand(4, 3, 16, 16)
    model.train()
    assert not torch.equal(model.features(x), model.features(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Moves every weight and BN statistic off its initial value, so a round trip that drops
    or mixes up tensors cannot pass by accident."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and name not in ("mu", "sigma"):
                t.add_(0.05 * torch.randn(t.shape, generator=g))
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model


def test_load_round_trip_from_model_safetensors_and_run_dir(tmp_path):
    torch.manual_seed(0)
    model = trained_like(build("wrn-10-1", 10, aux_classes=(20,), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)))
    card = model_card(model, "wrn-10-1", [f"c{i}" for i in range(10)], aux_classes=[20])
    export_model(tmp_path, primary_state_dict(model), card)
    assert json.loads((tmp_path / "model.json").read_text())["architecture"] == "wrn-10-1"
    x = torch.rand(3, 3, 16, 16)
    expected = model.eval()(x)
    for path in (tmp_path, tmp_path / "model.safetensors"):
        loaded = load(path)
        assert not loaded.training
        assert len(loaded.aux_fc) == 0  # the exported classifier is h_pri only
        assert torch.allclose(loaded.mu, model.mu) and torch.allclose(loaded.sigma, model.sigma)
        assert torch.equal(loaded(x), expected)


def test_load_round_trip_from_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = trained_like(build("wrn-10-1", 10, aux_classes=(20, 5)))
    card = model_card(model, "wrn-10-1", aux_classes=[20, 5])
    # As the trainer writes it: compile's `_orig_mod.` prefix removed before saving.
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "last.pt", {"model": clean_state_dict(state), "model_card": card})
    loaded = load(tmp_path / "last.pt")
    x = torch.rand(3, 3, 16, 16)
    assert not loaded.training
    assert loaded.aux_classes == (20, 5)
    assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("card_has_stats", [True, False])
def test_a_run_directory_from_before_dataset_normalisation_loads_to_the_same_logits(tmp_path, card_has_stats):
    # Older runs normalised every primary with CIFAR-10's statistics and wrote no source for
    # them (the oldest cards no mean/std at all): the buffers in the weights still decide.
    torch.manual_seed(0)
    model = trained_like(build("wrn-10-1", 100, aux_classes=(20,)))  # a CIFAR-100 run, CIFAR-10 stats
    card = model_card(model, "wrn-10-1", aux_classes=[20])
    if not card_has_stats:
        del card["mean"], card["std"]
    export_model(tmp_path, primary_state_dict(model), card)
    x = torch.rand(3, 3, 16, 16)
    loaded = load(tmp_path)
    assert loaded.mu.flatten().tolist() == pytest.approx(CIFAR10_MEAN)
    assert torch.equal(loaded(x), model.eval()(x))


def test_build_and_load_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*wrn-DEPTH-WIDTH.*resnet-18"):
        build("resnet18", 10)
    with pytest.raises(ValueError, match="ResNet depth must be one of \\[18, 34\\]"):
        build("resnet-50", 10)
    with pytest.raises(ValueError, match="resnet-18' has no dropout"):
        build("resnet-18", 10, dropout=0.3)
    with pytest.raises(ValueError, match="depth must be 6n\\+4"):
        build("wrn-27-10", 10)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        build("wrn-10-1", 0)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load(tmp_path)
    model = build("wrn-10-1", 10)
    export_model(tmp_path, primary_state_dict(model), model_card(model, "wrn-10-1"))
    (tmp_path / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="needs its model card"):
        load(tmp_path / "model.safetensors")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="expected a run directory, .safetensors or .pt"):
        load(tmp_path / "weights.bin")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a biamat-engine checkpoint"):
        load(tmp_path / "other.pt")


def test_a_full_disk_while_saving_a_checkpoint_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """torch reports a full disk as RuntimeError('... unexpected pos ...'): the engine turns it
    into ENOSPC naming the checkpoint, and the previous checkpoint stays whole."""
    import errno

    save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    before = (tmp_path / "last.pt").read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed\nunexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError) as err:
        save_checkpoint(tmp_path / "last.pt", {"epoch": 2})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "last.pt")
    assert "MiB free" in str(err.value)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("card_text, message", [
    ('{"architecture": "wrn-10-1", "num_cl', "is not valid JSON"),
    ('{"architecture": "wrn-10-1"}', "not a biamat-engine model card"),
    ('[1, 2]', "not a biamat-engine model card"),
])
def test_a_broken_model_card_is_named(tmp_path, card_text, message):
    model = build("wrn-10-1", 10)
    export_model(tmp_path, primary_state_dict(model), model_card(model, "wrn-10-1"))
    (tmp_path / "model.json").write_text(card_text)
    with pytest.raises(ValueError, match=message) as err:
        load(tmp_path)
    assert str(tmp_path / "model.json") in str(err.value)


def test_a_broken_manifest_is_named(tmp_path):
    from loaders.beton import read_manifest, write_beton
    from loaders.sources.shapes import make_shapes

    write_beton(tmp_path / "d.beton", make_shapes("primary", "train", n=4, size=8), format="shapes")
    (tmp_path / "d.beton.json").write_text('{"class_names": [')
    with pytest.raises(ValueError, match=r"d\.beton\.json: the manifest is not valid JSON"):
        read_manifest(tmp_path / "d.beton")


def expected_torchvision_resnet_keys(blocks: tuple[int, ...]) -> set[str]:
    """torchvision's ResNet state-dict keys with BasicBlocks, written out from its layout."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{s}" for s in bn}
    for stage, n in enumerate(blocks, start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight"} | {f"{p}.bn{j}.{s}" for j in (1, 2) for s in bn}
            if i == 0 and stage > 1:  # stride 2 and twice the channels: 1x1 conv + BN shortcut
                keys |= {f"{p}.downsample.0.weight"} | {f"{p}.downsample.1.{s}" for s in bn}
    return keys


def test_resnet18_is_the_cifar_variant_with_torchvision_key_names():
    with torch.device("meta"):
        model = build("resnet-18", 10)
    assert set(model.state_dict()) - {"mu", "sigma"} == expected_torchvision_resnet_keys((2, 2, 2, 2))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)  # 3x3 stem, no max-pool
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert [model.get_submodule(f"layer{s}")[0].conv1.out_channels for s in (1, 2, 3, 4)] == [64, 128, 256, 512]
    assert model.feature_dim == 512 and model.drop_rate == 0.0


def test_resnet_has_the_engines_model_interface():
    # What the engine reads of a model: features, heads (primary logits of every row, each
    # auxiliary chunk through its own head), forward = fc . features, the normalisation inside,
    # and the same outputs in channels_last. 8x8 images keep the 11 M-parameter net fast.
    torch.manual_seed(0)
    model = build("resnet-18", 10, aux_classes=(20, 7), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    x = torch.rand(9, 3, 8, 8)
    feats = model.features(x)
    assert feats.shape == (9, 512) and model(x).shape == (9, 10)
    logits_pri, logits_aux = model.heads(feats, (3, 2))
    assert torch.equal(logits_pri, model.fc(feats)) and torch.equal(model(x), logits_pri)
    assert torch.equal(logits_aux[0], model.aux_fc[0](feats[4:7]))
    assert torch.equal(logits_aux[1], model.aux_fc[1](feats[7:9]))
    assert model.aux_classes == (20, 7) and model.num_classes == 10
    stem = model.conv1((x - 0.5) / 0.25)
    assert torch.allclose(model.conv1(model.normalize(x)), stem)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, logits_pri, atol=1e-5, rtol=1e-5)


def test_resnet_load_round_trip_through_the_model_card_and_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = trained_like(build("resnet-18", 10, aux_classes=(20,), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)))
    card = model_card(model, "resnet-18", [f"c{i}" for i in range(10)], aux_classes=[20])
    export_model(tmp_path, primary_state_dict(model), card)
    save_checkpoint(tmp_path / "last.pt", {"model": clean_state_dict(model.state_dict()), "model_card": card})
    x = torch.rand(3, 3, 8, 8)
    expected = model.eval()(x)
    loaded = load(tmp_path)
    assert type(loaded).__name__ == "ResNet" and len(loaded.aux_fc) == 0
    assert torch.allclose(loaded.mu, model.mu) and torch.equal(loaded(x), expected)
    from_checkpoint = load(tmp_path / "last.pt")
    assert from_checkpoint.aux_classes == (20,) and torch.equal(from_checkpoint(x), expected)


# ---- per-image standardisation (model.normalization = per-image) ----------------------------

def tf_per_image_standardization(image: np.ndarray) -> np.ndarray:
    """tf.image.per_image_standardization (TensorFlow 1.x, image_ops_impl.py) line by line, on one
    (H, W, C) image; in float64, so the port gives the formula's value and the engine's fp32 is
    compared to it."""
    num_pixels = np.prod(image.shape[-3:])
    image = image.astype(np.float64)
    image_mean = np.mean(image)
    variance = np.mean(np.square(image)) - np.square(image_mean)
    variance = np.maximum(variance, 0.0)  # gen_nn_ops.relu
    stddev = np.sqrt(variance)
    min_stddev = 1.0 / np.sqrt(num_pixels)  # math_ops.rsqrt
    pixel_value_scale = np.maximum(stddev, min_stddev)
    return (image - image_mean) / pixel_value_scale


def reference_at_input(x: torch.Tensor, pixel_scale: float = 255.0) -> torch.Tensor:
    """What the reference AT model's first conv sees for the [0, 1] images `x`: its
    `tf.map_fn(per_image_standardization)` over NHWC images of 0-255 pixels, back in NCHW."""
    nhwc = (pixel_scale * x.double()).permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([tf_per_image_standardization(img) for img in nhwc])).permute(0, 3, 1, 2)


def floor_applies(x: torch.Tensor, pixel_scale: float) -> list[bool]:
    """Per image: whether TF's max(stddev, 1/sqrt(N)) takes the floor, in the port's units."""
    scaled = pixel_scale * x.double()
    return [bool(img.std(unbiased=False) < 1 / np.sqrt(img.numel())) for img in scaled]


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (5, 3, 8, 8), (3, 3, 7, 5), (2, 3, 32, 32), (1, 3, 64, 64)])
@pytest.mark.parametrize("pixel_scale", [255.0, 1.0])
def test_per_image_standardisation_is_tensorflows_formula_on_random_images(shape, pixel_scale):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g)
    x[0] *= 0.02  # a dark, low-contrast image beside ordinary ones: pixel_scale 1 floors its std
    out = per_image_standardization(x, pixel_scale)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), reference_at_input(x, pixel_scale), atol=2e-5, rtol=1e-5)


def test_per_image_standardisation_floors_the_std_at_one_over_sqrt_n_as_tensorflow():
    # A constant image (std 0) maps to zeros, with a finite gradient (the attack starts from it);
    # low-contrast images have their std floored (checked on the port, so the floor is exercised).
    g = torch.Generator().manual_seed(0)
    constant = torch.full((1, 3, 16, 16), 0.3)
    faint = 1e-4 * torch.rand((2, 3, 16, 16), generator=g)  # std 7e-3 in 0-255 units < 1/sqrt(768)
    x = torch.cat([constant, faint, torch.rand((1, 3, 16, 16), generator=g)])
    assert floor_applies(x, 255.0) == [True, True, True, False]
    x.requires_grad_(True)
    out = per_image_standardization(x)
    torch.testing.assert_close(out.detach().double(), reference_at_input(x.detach()), atol=2e-5, rtol=1e-5)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    # The floor is 1/sqrt(N) at the reference's 0-255 pixels, so the faint images keep their
    # (small) values, 255 * (x - mean) * sqrt(N), rather than being blown up to unit std.
    assert float(out[1].detach().std(unbiased=False)) == pytest.approx(float(255 * x[1].detach().std(unbiased=False) * 768**0.5), rel=1e-3)


def test_per_image_standardisation_keeps_channels_last_and_takes_fp32_statistics_under_autocast():
    g = torch.Generator().manual_seed(1)
    x = torch.rand((4, 3, 16, 16), generator=g)
    expected = per_image_standardization(x)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out_cl = per_image_standardization(x_cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, expected, atol=1e-6, rtol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = per_image_standardization(x_cl)
    assert under_autocast.dtype == torch.float32  # statistics and output as without autocast
    torch.testing.assert_close(under_autocast, expected, atol=1e-6, rtol=1e-6)
    # A low-precision input comes back in its dtype, standardised with fp32 statistics.
    half = per_image_standardization(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, per_image_standardization(x.bfloat16().float()).bfloat16(), atol=0, rtol=0)


def test_a_per_image_model_standardises_each_image_inside_and_keeps_identity_buffers():
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, normalization="per-image").eval()
    assert model.normalization == "per-image"
    assert model.mu.flatten().tolist() == [0.0, 0.0, 0.0] and model.sigma.flatten().tolist() == [1.0, 1.0, 1.0]
    x = torch.rand(3, 3, 16, 16)
    # conv1 sees what the reference AT model's first conv sees.
    torch.testing.assert_close(model.conv1(model.normalize(x)), model.conv1(reference_at_input(x).float()),
                               atol=1e-4, rtol=1e-4)
    # Each image on its own: a brighter, higher-contrast copy of an image gets the same logits,
    # and an image's logits do not depend on the others in the batch (eval mode).
    logits = model(x)
    torch.testing.assert_close(model(0.5 * x + 0.25), logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model(x[1:2]), logits[1:2], atol=1e-5, rtol=1e-5)
    model_cl = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model_cl(x.contiguous(memory_format=torch.channels_last)), logits, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(x).float(), logits, atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="per-image standardisation takes no per-channel mean and std"):
        build("wrn-10-1", 10, mean=CIFAR10_MEAN, normalization="per-image")
    with pytest.raises(ValueError, match="normalization 'per-pixel' is not one of per-channel, per-image"):
        build("wrn-10-1", 10, normalization="per-pixel")


def test_a_per_image_model_compiles_to_the_same_features_and_input_gradients():
    # The trainer compiles model.features; aot_eager traces it as inductor would, without a C
    # compiler. fullgraph: the standardisation must not break the graph.
    torch.manual_seed(0)
    model = build("wrn-10-1", 10, normalization="per-image").eval()
    x = torch.rand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model.features, backend="aot_eager", fullgraph=True)
    x_eager, x_comp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager_out, comp_out = model.features(x_eager), compiled(x_comp)
    torch.testing.assert_close(comp_out, eager_out, atol=1e-5, rtol=1e-5)
    eager_out.sum().backward()
    comp_out.sum().backward()
    torch.testing.assert_close(x_comp.grad, x_eager.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["wrn-10-1", "resnet-18"])
def test_a_per_image_model_loads_as_per_image_from_its_card_and_checkpoint(tmp_path, arch):
    torch.manual_seed(0)
    model = trained_like(build(arch, 10, aux_classes=(20,), normalization="per-image"))
    card = model_card(model, arch, aux_classes=[20])
    assert card["normalization"] == "per-image" and (card["mean"], card["std"]) == ([0.0] * 3, [1.0] * 3)
    export_model(tmp_path, primary_state_dict(model), card)
    save_checkpoint(tmp_path / "last.pt", {"model": clean_state_dict(model.state_dict()), "model_card": card})
    x = torch.rand(3, 3, 8, 8)
    expected = model.eval()(x)
    for path in (tmp_path, tmp_path / "model.safetensors", tmp_path / "last.pt"):
        loaded = load(path)
        assert loaded.normalization == "per-image"
        assert torch.equal(loaded(x), expected)


@pytest.mark.parametrize("arch", ["wrn-10-1", "resnet-18"])
def test_a_run_from_before_per_image_normalisation_loads_to_bit_identical_logits(tmp_path, arch):
    # A model built the old way (no normalization argument: per-channel buffers), saved with the
    # card of the time, which had mean and std but no `normalization` key.
    torch.manual_seed(0)
    model = trained_like(build(arch, 10, aux_classes=(20,), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)))
    card = model_card(model, arch, aux_classes=[20])
    del card["normalization"]
    export_model(tmp_path, primary_state_dict(model), card)
    save_checkpoint(tmp_path / "best.pt", {"model": clean_state_dict(model.state_dict()), "model_card": card})
    x = torch.rand(3, 3, 8, 8)
    expected = model.eval()(x)
    for path in (tmp_path, tmp_path / "best.pt"):
        loaded = load(path)
        assert loaded.normalization == "per-channel"
        assert torch.equal(loaded(x), expected)


def test_load_trained_takes_the_normalisation_the_weights_were_trained_with():
    torch.manual_seed(0)
    per_image = trained_like(build("wrn-10-1", 10, normalization="per-image"))
    x = torch.rand(2, 3, 8, 8)
    expected = per_image.eval()(x)
    fresh = build("wrn-10-1", 10)  # what a config asking for per-channel CIFAR-10 statistics builds
    built = fresh.load_trained(per_image.state_dict(), "per-image")
    assert built == f"mean {torch.tensor(CIFAR10_MEAN).tolist()} / std {torch.tensor(CIFAR10_STD).tolist()}"
    assert fresh.normalization == "per-image" and torch.equal(fresh.eval()(x), expected)
    assert fresh.load_trained(per_image.state_dict(), "per-image") is None  # nothing differs now
    back = build("wrn-10-1", 10, normalization="per-image")
    assert back.load_trained(build("wrn-10-1", 10).state_dict()) == "per-image standardisation"
    assert back.normalization == "per-channel"


def test_a_card_with_an_unknown_normalisation_is_named(tmp_path):
    model = build("wrn-10-1", 10)
    export_model(tmp_path, primary_state_dict(model), {**model_card(model, "wrn-10-1"), "normalization": "per-pixel"})
    with pytest.raises(ValueError, match=r"model\.json: normalization = 'per-pixel' is not one of per-channel, per-image"):
        load(tmp_path)
