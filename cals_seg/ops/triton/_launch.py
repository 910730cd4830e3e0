"""Tile sizes shared by the Triton kernels (imports triton)."""
import triton

# Logits kept in registers per program: (classes padded to a power of two) x
# pixels. 4096 float32 values are 32 per thread at 4 warps, with room for the
# few other tiles of the same shape a kernel holds.
TILE_ELEMENTS = 4096
MAX_BLOCK = 1024
MIN_BLOCK = 16


def class_tile(num_classes: int, tile_elements: int = TILE_ELEMENTS):
    """``(CLASSES, BLOCK)``: the class axis padded to a power of two, and the
    pixels per program (a power of two, smaller for many classes so that the
    tile stays in registers; at least 16 pixels, 64 contiguous bytes per class
    row)."""
    classes = triton.next_power_of_2(max(num_classes, 1))
    block = max(MIN_BLOCK, min(MAX_BLOCK, tile_elements // classes))
    return classes, block
