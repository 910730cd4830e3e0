from .hash_split import HashSplitDataset, hash_fraction

__all__ = ['HashSplitDataset', 'hash_fraction']
