"""Batch sources: coverage, batch sizes, bit-exact resume, DDP shares, and file decoding errors."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from longtail.data.base import FileSplit
from longtail.data.batches import (
    Batch,
    EvalBatches,
    InMemoryBatches,
    _mix_seed,
)
from longtail.data.loader import LoaderBatches, LoaderEvalBatches
from longtail.data.samplers import ClassBalancedSampler, InstanceSampler
from longtail.data.augment import rand, randn
from longtail.errors import ConfigError, DataError

N, H, W = 37, 4, 5


# Stand-in views with the view contract: uint8 [B, H, W, C] + generator -> float32 [B, C, H, W].
def raw_view(x, g):
    return x.permute(0, 3, 1, 2).float()


def flip_view(x, g):
    flip = rand(g, x.shape[0], device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(2), x)
    return (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5


def noise_view(x, g):
    x = x.permute(0, 3, 1, 2).float() / 255
    return x + 0.1 * randn(g, *x.shape, device=x.device)


def make_data(n=N, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, H, W, 3)).astype(np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # the image knows its own index (n < 256)
    labels = rng.randint(0, 4, size=n).astype(np.int64)
    return images, labels


def make_source(images, labels, sampler=None, **kw):
    kw.setdefault("views", [flip_view, noise_view])
    kw.setdefault("batch_size", 8)
    sampler = sampler or InstanceSampler(labels, seed=1)
    return InMemoryBatches(images, labels, sampler=sampler, device="cpu", seed=7, **kw)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.index, y.index) and torch.equal(x.labels, y.labels)
        assert len(x.views) == len(y.views)
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))


# ---------------------------------------------------------------------------------------------------
# InMemoryBatches


def test_mix_seed_is_exported_for_batches():
    assert len({_mix_seed(7, e, s, r) for e in range(4) for s in range(50) for r in range(2)}) == 400


def test_in_memory_covers_every_index_once_and_keeps_the_last_partial_batch():
    images, labels = make_data()
    src = make_source(images, labels, views=[raw_view])
    assert len(src) == 5  # ceil(37 / 8)
    batches = list(src.epoch(0))
    assert [len(b.index) for b in batches] == [8, 8, 8, 8, 5]
    assert torch.equal(torch.sort(torch.cat([b.index for b in batches])).values, torch.arange(N))
    for b in batches:
        assert isinstance(b, Batch) and b.labels.dtype == torch.int64 and b.index.dtype == torch.int64
        x = b.views[0]
        assert x.dtype == torch.float32 and x.shape == (len(b.index), 3, H, W)
        assert torch.equal(x[:, 0, 0, 0].long(), b.index)  # the images are the indexed ones
        assert torch.equal(b.labels, torch.as_tensor(labels)[b.index])
        assert torch.equal(x, torch.as_tensor(images)[b.index].permute(0, 3, 1, 2).float())


def test_in_memory_drop_last():
    images, labels = make_data()
    src = make_source(images, labels, drop_last=True)
    assert len(src) == 4
    assert [len(b.index) for b in src.epoch(0)] == [8] * 4


def test_in_memory_resume_is_bit_exact():
    images, labels = make_data()
    src = make_source(images, labels)
    full = list(src.epoch(3))
    for s in (0, 2, 4, 5):
        assert_same_batches(list(src.epoch(3, start_step=s)), full[s:])
    # a fresh source (a restarted process) gives the same batches too
    assert_same_batches(list(make_source(images, labels).epoch(3, start_step=2)), full[2:])


def test_in_memory_is_deterministic_and_random():
    images, labels = make_data()
    a, b = list(make_source(images, labels).epoch(1)), list(make_source(images, labels).epoch(1))
    assert_same_batches(a, b)
    # another epoch has another order and other draws
    assert not torch.equal(a[0].index, list(make_source(images, labels).epoch(2))[0].index)
    # every step draws its own numbers
    noise = [b.views[1] - torch.as_tensor(images)[b.index].permute(0, 3, 1, 2).float() / 255 for b in a[:2]]
    assert not torch.allclose(noise[0], noise[1], atol=1e-4)
    # each view draws its own numbers: the same random view twice gives different outputs
    twice = next(make_source(images, labels, views=[noise_view, noise_view]).epoch(0))
    assert not torch.equal(twice.views[0], twice.views[1])
    # the augmentation seed matters, the order (sampler seed) does not change with it
    other = InMemoryBatches(images, labels, views=[flip_view, noise_view], batch_size=8,
                            sampler=InstanceSampler(labels, seed=1), device="cpu", seed=8)
    c = next(other.epoch(1))
    assert torch.equal(c.index, a[0].index) and not torch.equal(c.views[1], a[0].views[1])


def test_in_memory_two_ranks_share_each_global_batch():
    images, labels = make_data()
    whole = list(make_source(images, labels, views=[raw_view]).epoch(2))
    ranks = [list(make_source(images, labels, views=[raw_view], rank=r, world_size=2).epoch(2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for g, r0, r1 in zip(whole, *ranks):
        used = g.index[: len(g.index) - len(g.index) % 2]  # 37 = 4 x 8 + 5: the tail of 5 is trimmed to 4
        assert not set(r0.index.tolist()) & set(r1.index.tolist())
        assert sorted(r0.index.tolist() + r1.index.tolist()) == sorted(used.tolist())
        assert torch.equal(torch.cat([r0.index, r1.index]), used)  # rank order = batch order
        assert torch.equal(r1.labels, torch.as_tensor(labels)[r1.index])
    # each rank's augmented views are its rows of the single process's: augmentation does not depend
    # on the number of processes (here with the noise of a view and with real ops: crop, flip, AutoAugment,
    # Cutout, SimCLR colour views, RandAugment)
    from longtail.data.augment import build_view

    kw = dict(image_size=4, crop_padding=1, flip=True, cutout=2, randaugment_n=2, randaugment_m=10,
              randaugment_mstd=0.5, mean=(0.5,) * 3, std=(0.25,) * 3)
    sim = build_view("simclr", **kw)  # given twice: the two copies are augmented as one stacked batch
    views = ([flip_view, noise_view] + [build_view(p, **kw) for p in ("autoaugment", "simclr", "simclr_rand")]
             + [sim, noise_view, sim])
    for world_size in (2, 3):
        one = list(make_source(images, labels, views=views, batch_size=6).epoch(1))
        many = [list(make_source(images, labels, views=views, batch_size=6, rank=r,
                                 world_size=world_size).epoch(1)) for r in range(world_size)]
        assert len(many[0]) == len(one) - 1  # 37 = 6 x 6 + 1: a tail of 1 is dropped under DDP
        for g, *parts in zip(one, *many):
            n = sum(len(p.index) for p in parts)
            assert torch.equal(torch.cat([p.index for p in parts]), g.index[:n])
            for v in range(len(views)):
                torch.testing.assert_close(torch.cat([p.views[v] for p in parts]), g.views[v][:n], rtol=0, atol=1e-6)


def test_in_memory_stacks_identical_views_with_independent_draws():
    """A view given k times runs once on k stacked copies: each copy is what a k-times-larger draw gives
    its rows, the copies differ, and their order of draws is that of the view's first place."""
    from longtail.data.draws import stacked

    images, labels = make_data()
    b = next(make_source(images, labels, views=[flip_view, noise_view, noise_view]).epoch(0))
    assert not torch.equal(b.views[1], b.views[2])
    x = torch.as_tensor(images)[b.index]
    g = torch.Generator().manual_seed(_mix_seed(7, 0, 0, 0))
    first = flip_view(x, g)
    with stacked(2):
        both = noise_view(x.repeat(2, 1, 1, 1), g)
    assert torch.equal(b.views[0], first)
    assert torch.equal(b.views[1], both[:8]) and torch.equal(b.views[2], both[8:])
    # the same noise, drawn plainly for 16 rows after the flip's draw
    g.manual_seed(_mix_seed(7, 0, 0, 0))
    flip_view(x, g)
    plain = x.permute(0, 3, 1, 2).float().repeat(2, 1, 1, 1) / 255 + 0.1 * torch.randn(16, 3, H, W, generator=g)
    torch.testing.assert_close(torch.cat([b.views[1], b.views[2]]), plain, rtol=0, atol=0)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_in_memory_ddp_shares_have_equal_sizes_at_every_step(world_size):
    # the contrastive all-gathers need equal shares, and DDP weighs every rank's gradient equally
    images, labels = make_data()  # 37 = 4 x 8 + 5
    shares = [[len(b.index) for b in make_source(images, labels, views=[raw_view], batch_size=world_size * 2,
                                                 rank=r, world_size=world_size).epoch(0)] for r in range(world_size)]
    assert all(s == shares[0] for s in shares)
    whole = 37 // (world_size * 2) * world_size * 2
    tail = 37 - whole
    assert shares[0] == [2] * (whole // (world_size * 2)) + ([tail // world_size] if tail >= world_size else [])


def test_in_memory_ddp_drops_a_tail_smaller_than_the_world():
    images, labels = make_data(n=33)  # 4 full batches of 8 and a tail of 1
    assert len(make_source(images, labels)) == 5
    src = make_source(images, labels, rank=1, world_size=2)
    assert len(src) == 4 and [len(b.index) for b in src.epoch(0)] == [4] * 4


def test_in_memory_with_class_balanced_sampler():
    images, labels = make_data()
    sampler = ClassBalancedSampler(labels, seed=0, k=2)
    src = make_source(images, labels, sampler=sampler, views=[raw_view], batch_size=6)
    assert len(src) == -(-len(sampler) // 6)
    idx = torch.cat([b.index for b in src.epoch(0)])
    assert torch.equal(idx, sampler.epoch_indices(0))


def test_in_memory_channels_last():
    images, labels = make_data()
    # The stand-in views permute NHWC input, which is channels_last already; force plain NCHW here.
    def nchw_view(x, g):
        return flip_view(x, g).contiguous()

    b = next(make_source(images, labels, views=[nchw_view]).epoch(0))
    assert not b.views[0].is_contiguous(memory_format=torch.channels_last)
    b = next(make_source(images, labels, views=[nchw_view], channels_last=True).epoch(0))
    assert b.views[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(b.views[0], next(make_source(images, labels, views=[nchw_view]).epoch(0)).views[0])


def test_in_memory_start_step_bounds():
    images, labels = make_data()
    src = make_source(images, labels)
    assert list(src.epoch(0, start_step=len(src))) == []
    with pytest.raises(ValueError, match="start_step"):
        list(src.epoch(0, start_step=len(src) + 1))
    with pytest.raises(ValueError, match="start_step"):
        list(src.epoch(0, start_step=-1))


def test_in_memory_rejects_bad_inputs():
    images, labels = make_data()
    with pytest.raises(ValueError, match="uint8"):
        make_source(images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="uint8"):
        make_source(images[0], labels)
    with pytest.raises(ValueError, match="one label per image"):
        make_source(images, labels[:-1], sampler=InstanceSampler(labels, seed=0))
    with pytest.raises(ValueError, match="sampler was built on"):
        make_source(images, labels, sampler=InstanceSampler(labels[:-1], seed=0))
    with pytest.raises(ConfigError, match="not divisible by the world size"):
        make_source(images, labels, batch_size=9, world_size=2)
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        make_source(images, labels, batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        make_source(images, labels, rank=2, world_size=2)
    with pytest.raises(ValueError, match="at least one view"):
        make_source(images, labels, views=[])


# ---------------------------------------------------------------------------------------------------
# EvalBatches


def norm_view(x, g):
    return (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_batches_cover_each_sample_once(world_size):
    images, labels = make_data(n=23)
    seen = []
    for r in range(world_size):
        src = EvalBatches(images, labels, batch_size=5, device="cpu", view=norm_view, rank=r, world_size=world_size)
        batches = list(src)
        assert len(batches) == len(src)
        for b in batches:
            ref = (torch.as_tensor(images)[b.index].permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
            assert len(b.views) == 1 and torch.equal(b.views[0], ref)
            assert torch.equal(b.labels, torch.as_tensor(labels)[b.index])
        idx = torch.cat([b.index for b in batches]).tolist()
        assert idx == list(range(idx[0], idx[0] + len(idx)))  # one contiguous chunk, in order
        seen.append(idx)
    sizes = [len(s) for s in seen]
    assert max(sizes) - min(sizes) <= 1
    assert sorted(sum(seen, [])) == list(range(23))


def test_eval_batches_reject_bad_batch_size():
    images, labels = make_data()
    with pytest.raises(ConfigError, match="batch_size"):
        EvalBatches(images, labels, batch_size=0, device="cpu", view=norm_view)


# ---------------------------------------------------------------------------------------------------
# LoaderBatches (image files)

NF = 11


@pytest.fixture(scope="module")
def file_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    paths, labels = [], []
    for i in range(NF):
        img = rng.randint(0, 256, size=(10, 12, 3)).astype(np.uint8)
        name = f"c{i % 3}/img{i}.{'png' if i % 2 == 0 else 'jpg'}"
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(root / name)
        paths.append(name)
        labels.append(i % 3)
    return FileSplit(root=root, paths=paths, labels=np.array(labels, dtype=np.int64))


def det_transform(img):
    return T.functional.pil_to_tensor(img).float() / 255  # [3, 10, 12]


RANDOM_TRANSFORM = T.Compose([T.RandomResizedCrop(6, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


def make_loader(split, num_workers, **kw):
    kw.setdefault("transforms", [det_transform, RANDOM_TRANSFORM])
    sampler = InstanceSampler(split.labels, seed=2)
    return LoaderBatches(split, batch_size=4, sampler=sampler, device="cpu", seed=5, num_workers=num_workers, **kw)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_batches_shapes_labels_and_resume(file_split, num_workers):
    src = make_loader(file_split, num_workers)
    assert len(src) == 3
    full = list(src.epoch(1))
    assert [len(b.index) for b in full] == [4, 4, 3]
    assert sorted(torch.cat([b.index for b in full]).tolist()) == list(range(NF))
    for b in full:
        assert b.views[0].shape == (len(b.index), 3, 10, 12) and b.views[1].shape == (len(b.index), 3, 6, 6)
        assert b.views[0].dtype == torch.float32 and b.labels.dtype == torch.int64
        assert torch.equal(b.labels, torch.as_tensor(file_split.labels)[b.index])
        for j, i in enumerate(b.index.tolist()):
            ref = det_transform(Image.open(file_split.root / file_split.paths[i]).convert("RGB"))
            assert torch.equal(b.views[0][j], ref)
    assert torch.equal(torch.cat([b.index for b in full]), InstanceSampler(file_split.labels, seed=2).epoch_indices(1))
    # resume mid-epoch gives the tail bit for bit (also the random view), and so does a new loader
    assert_same_batches(list(src.epoch(1, start_step=1)), full[1:])
    assert_same_batches(list(make_loader(file_split, num_workers).epoch(1, start_step=2)), full[2:])
    # another epoch draws other crops for the same image
    again = {int(i): b.views[1][j] for b in src.epoch(2) for j, i in enumerate(b.index)}
    first = {int(i): b.views[1][j] for b in full for j, i in enumerate(b.index)}
    assert any(not torch.equal(again[i], first[i]) for i in range(NF))


def test_loader_augmentation_does_not_depend_on_workers_and_spares_global_rng(file_split):
    state, py_state = torch.get_rng_state(), random.getstate()
    zero = list(make_loader(file_split, 0).epoch(0))
    # num_workers=0 restores the trainer's RNGs around each sample's seeded transforms
    assert torch.equal(state, torch.get_rng_state()) and py_state == random.getstate()
    assert_same_batches(zero, list(make_loader(file_split, 2).epoch(0)))


def test_loader_two_ranks_share_each_global_batch(file_split):
    whole = list(make_loader(file_split, 0).epoch(0))
    ranks = [list(make_loader(file_split, 0, rank=r, world_size=2).epoch(0)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for g, r0, r1 in zip(whole, *ranks):
        n = len(g.index) - len(g.index) % 2  # an odd tail is trimmed to equal shares
        assert len(r0.index) == len(r1.index) == n // 2
        assert torch.equal(torch.cat([r0.index, r1.index]), g.index[:n])
        # a sample's augmentation depends on its global position only, not on the rank
        assert torch.equal(r1.views[1], g.views[1][n // 2:n])
    assert len(whole[-1].index) % 2 == 1  # the fixture's tail is odd, so the trimming is exercised


def test_loader_channels_last(file_split):
    b = next(make_loader(file_split, 0, channels_last=True).epoch(0))
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in b.views)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_missing_file_names_it(file_split, num_workers):
    split = FileSplit(file_split.root, file_split.paths[:3] + ["c0/gone.png"], file_split.labels[:4])
    src = make_loader(split, num_workers)
    with pytest.raises(DataError, match="gone.png"):
        list(src.epoch(0))


def test_loader_corrupt_file_names_it(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    split = FileSplit(tmp_path, ["bad.jpg"], np.array([0]))
    with pytest.raises(DataError, match="bad.jpg"):
        list(make_loader(split, 0).epoch(0))


def test_loader_rejects_bad_arguments(file_split):
    with pytest.raises(ValueError, match="at least one transform"):
        make_loader(file_split, 0, transforms=[])
    with pytest.raises(ConfigError, match="num_workers"):
        make_loader(file_split, -1)
    with pytest.raises(ConfigError, match="not divisible"):
        make_loader(file_split, 0, world_size=3)


@pytest.mark.parametrize("num_workers,world_size", [(0, 1), (0, 3), (2, 2)])
def test_loader_eval_covers_each_file_once(file_split, num_workers, world_size):
    seen = []
    for r in range(world_size):
        src = LoaderEvalBatches(file_split, transform=det_transform, batch_size=3, device="cpu",
                                num_workers=num_workers, rank=r, world_size=world_size)
        batches = list(src)
        assert len(batches) == len(src)
        for b in batches:
            assert len(b.views) == 1 and torch.equal(b.labels, torch.as_tensor(file_split.labels)[b.index])
        seen += torch.cat([b.index for b in batches]).tolist()
    assert sorted(seen) == list(range(NF)) and len(seen) == NF
