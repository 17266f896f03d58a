"""Partitions: every training sample exactly once, with the requested label skew; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from federated.task import check_partition_args, label_counts, load_split, partition_indices


@pytest.mark.parametrize(("partitioner", "alpha", "k"), [("iid", 0.5, 2), ("dirichlet", 0.5, 2),
                                                         ("dirichlet", 0.1, 2), ("pathological", 0.5, 3)])
def test_partitions_cover_every_sample_exactly_once(partitioner: str, alpha: float, k: int) -> None:
    parts = partition_indices("digits", 10, partitioner, alpha, k, 0)
    everything = np.concatenate(parts)
    n = len(load_split("digits").y_train)
    assert len(parts) == 10
    assert len(everything) == n
    assert np.array_equal(np.sort(everything), np.arange(n))


def _skew(counts: np.ndarray) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    glob = counts.sum(0) / counts.sum()
    local = counts / counts.sum(1, keepdims=True)
    return float(0.5 * np.abs(local - glob).sum(1).mean())


def test_pathological_gives_exactly_k_labels_per_client() -> None:
    for k in (1, 2, 3):
        counts = label_counts("digits", partition_indices("digits", 10, "pathological", 0.5, k, 0))
        assert ((counts > 0).sum(1) == k).all()


def test_iid_matches_global_label_mix_and_equal_sizes() -> None:
    parts = partition_indices("digits", 10, "iid", 0.5, 2, 0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _skew(label_counts("digits", parts)) < 0.12


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    skews = [_skew(label_counts("digits", partition_indices("digits", 10, "dirichlet", a, 2, 0)))
             for a in (100.0, 0.5, 0.1)]
    assert skews[0] < 0.12 < skews[1] < skews[2]
    # alpha 0.1 leaves most clients with a few dominant labels
    assert skews[2] > 0.5


def test_same_seed_same_partition_other_seed_other_partition() -> None:
    a = partition_indices("digits", 5, "dirichlet", 0.5, 2, 1)
    b = partition_indices("digits", 5, "dirichlet", 0.5, 2, 1)
    c = partition_indices("digits", 5, "dirichlet", 0.5, 2, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(("kwargs", "names"), [
    ({"dataset": "mnist"}, "dataset"),
    ({"num_partitions": 100_000}, "num_partitions"),
    ({"num_partitions": 0}, "num_partitions"),
    ({"partitioner": "dirichlet", "alpha": 0.0}, "alpha"),
    ({"partitioner": "dirichlet", "alpha": -1.0}, "alpha"),
    ({"partitioner": "pathological", "classes_per_client": 11}, "classes_per_client"),
    ({"partitioner": "shards"}, "partitioner"),
])
def test_bad_partition_arguments_name_the_parameter(kwargs: dict, names: str) -> None:
    args = {"dataset": "digits", "num_partitions": 10, "partitioner": "iid", "alpha": 0.5,
            "classes_per_client": 2, **kwargs}
    with pytest.raises(ValueError, match=names):
        check_partition_args(**args)


def test_breast_cancer_split_is_standardized_and_stratified() -> None:
    s = load_split("breast_cancer")
    assert s.num_classes == 2 and s.num_features == 30
    assert len(s.y_train) + len(s.y_test) == 569
    assert np.allclose(s.x_train.mean(0), 0, atol=1e-5)
    assert abs(s.y_train.mean() - s.y_test.mean()) < 0.02
