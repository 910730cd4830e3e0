from .hash_split import HashSplitDataset, hash_fraction
from .transforms import ImageCorruption

__all__ = ['HashSplitDataset', 'ImageCorruption', 'hash_fraction']
