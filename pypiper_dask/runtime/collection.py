"""``Pipeline.to_dask()``: a finite pipeline as a Dask collection."""

from __future__ import annotations

from typing import Any

import dask
from dask.base import DaskMethodsMixin

__all__ = ["PipelineCollection"]


def _first(results: Any) -> Any:
    return results[0]


class PipelineCollection(DaskMethodsMixin):
    """A whole run of a pipeline as one Dask collection.

    ``dask.compute(collection)`` gives the ``PipelineResult`` that ``run()``
    gives (without printing: a collection returns values); ``dask.visualize``
    draws its task graph.
    """

    def __init__(self, graph: dict, key: Any, n_partitions: int) -> None:
        self._graph = graph
        self._key = key
        self.n_partitions = n_partitions

    def __dask_graph__(self) -> dict:
        return self._graph

    def __dask_keys__(self) -> list:
        return [self._key]

    def __dask_layers__(self) -> tuple:
        return (self._key[0],)

    def __dask_tokenize__(self) -> Any:
        return self._key

    def __dask_postcompute__(self) -> tuple:
        return _first, ()

    def __dask_postpersist__(self) -> tuple:
        return PipelineCollection._rebuild, (self._key, self.n_partitions)

    @staticmethod
    def _rebuild(dsk: dict, key: Any, n_partitions: int, rename: Any = None) -> PipelineCollection:
        return PipelineCollection(dsk, key, n_partitions)

    # The chain tasks of a sequential stage run one after another anyway;
    # threads let the fused tasks of different partitions overlap.
    __dask_scheduler__ = staticmethod(dask.threaded.get)

    @staticmethod
    def __dask_optimize__(dsk: dict, keys: list, **kwargs: Any) -> dict:
        return dsk

    def __repr__(self) -> str:
        return f"<PipelineCollection: {len(self._graph)} tasks over {self.n_partitions} partitions>"
