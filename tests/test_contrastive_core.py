"""The contrastive core: one anchor order and one contrast set for SupCon, BCL and BBL; references
(memory banks, queues) and the DDP gather are the same path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longtail.losses import BCLLoss, SupConLoss
from longtail.losses.contrastive import contrast_set


def _batch(n, v, d, seed, classes=3):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, v, d, generator=g, dtype=torch.float64), dim=-1)
    return emb, torch.randint(0, classes, (n,), generator=g)


def test_the_anchor_order_is_image_major_and_the_masks_are_the_written_out_ones():
    emb, y = _batch(4, 3, 5, 0)
    refs, ry = F.normalize(torch.randn(2, 5, dtype=torch.float64), dim=-1), torch.tensor([1, 2])
    cs = contrast_set(emb, y, refs, ry, local_range=(1, 3))
    assert cs.rows == (3, 9) and cs.n_batch == 12 and cs.z.shape == (14, 5)
    for r in range(12):  # entry n·V + v is view v of image n
        assert torch.equal(cs.z[r], emb[r // 3, r % 3]) and cs.labels[r] == y[r // 3] and cs.images[r] == r // 3
    assert torch.equal(cs.z[12:], refs) and cs.images[12:].tolist() == [-1, -1]
    is_self, same = cs.is_self(), cs.same_label()
    for a in range(6):
        for m in range(14):
            assert bool(is_self[a, m]) == (m == a + 3)
            assert bool(same[a, m]) == (cs.labels[a + 3] == cs.labels[m])
    torch.testing.assert_close(cs.similarity(0.5), cs.z[3:9] @ cs.z.T / 0.5)
    with pytest.raises(ValueError, match="ref_labels"):
        contrast_set(emb, y, refs, None)


@pytest.mark.parametrize("loss", [SupConLoss(0.2), BCLLoss(0.2), BCLLoss(0.2, class_averaging=False)],
                         ids=["supcon", "bcl", "bcl-no-averaging"])
def test_references_are_the_ddp_path(loss):
    """References in the contrast set equal other images of a gathered batch that are not anchors:
    a memory bank, a queue and the DDP all-gather enter a loss the same way."""
    emb, y = _batch(5, 2, 8, 1)
    others, oy = _batch(3, 2, 8, 2)
    extra = (F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=-1),) if isinstance(loss, BCLLoss) else ()
    with_refs = loss(emb, y, *extra, ref_embeddings=others, ref_labels=oy)
    gathered = loss(torch.cat([emb, others]), torch.cat([y, oy]), *extra, local_range=(0, 5))
    torch.testing.assert_close(with_refs, gathered, rtol=1e-12, atol=1e-12)
    # and references change the loss: they are contrasted with
    assert not torch.allclose(with_refs, loss(emb, y, *extra))
