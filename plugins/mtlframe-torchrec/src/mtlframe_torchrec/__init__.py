"""mtlframe-torchrec: the ``torchrec-embedding`` encoder (TorchRec ``EmbeddingBagCollection``,
sharded with ``DistributedModelParallel`` when training runs in several processes)."""

__version__ = "0.1.0"
