"""What the Triton kernels share (imports triton): tile sizes, the loading of
a (classes x pixels) tile of logits, and the pieces of the PHR penalty."""
import triton
import triton.language as tl

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


@triton.jit
def load_logit_tile(z_ptr, image, block, num_classes, num_pixels,
                    OTHER: tl.constexpr, CLASSES: tl.constexpr, BLOCK: tl.constexpr):
    """Program ``block``'s tile of image ``image`` of contiguous ``(N, C, P)``
    logits. Returns ``pixel`` ``[BLOCK]``, ``k`` ``[CLASSES]``, their masks
    ``in_image`` and ``is_class``, the tile's mask and flat ``index``
    ``(CLASSES, BLOCK)``, and the logits there (``OTHER`` outside the tile)."""
    pixel = block * BLOCK + tl.arange(0, BLOCK)
    k = tl.arange(0, CLASSES)
    in_image = pixel < num_pixels
    is_class = k < num_classes
    tile = is_class[:, None] & in_image[None, :]
    index = (image * num_classes + k[:, None]) * num_pixels + pixel[None, :]
    z = tl.load(z_ptr + index, mask=tile, other=OTHER)
    return pixel, k, in_image, is_class, tile, index, z


@triton.jit
def phr_derivative(offset, slope, distance, usable):
    """PHR's ``P' = max(0, offset + slope * d)`` at the ``usable`` entries, 0
    elsewhere."""
    y = offset + slope * distance
    # y < 0 rather than a maximum: a NaN stays NaN, as torch.clamp_min keeps it.
    return tl.where(usable, tl.where(y < 0, 0.0, y), 0.0)


@triton.jit
def clip(x, low, high):
    return tl.where(x < low, low, tl.where(x > high, high, x))


@triton.jit
def nonfinite_per_pixel(z, tile):
    """How many of each pixel's logits are NaN or infinite, ``[BLOCK]``."""
    return tl.sum(tl.where(tile & (z - z != 0), 1, 0), axis=0)


@triton.jit
def largest_logit_direction(x, z, top, tile):
    """``d/dz sum_k P(max_j z_j - z_k)`` over ``P'``: ``x - [k wins] sum_j
    x_j / #winners``; tied largest logits split the winner's share, as the
    gradient of amax."""
    wins = tile & (z == top[None, :])
    winners = tl.sum(wins.to(tl.float32), axis=0)
    share = tl.sum(x, axis=0) / tl.where(winners > 0, winners, 1.0)
    return x - tl.where(wins, share[None, :], 0.0)
