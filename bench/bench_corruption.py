"""What an ImageNet-C corruption costs against the model it feeds: each
corruption (severity 3) of one 512 x 1024 image beside one forward pass of the
tiny demo DeepLabV3 (configs/_base_/models/deeplabv3_r18tiny.py) at that size,
timed side by side in one process. A ratio above 1 means the data pipeline, not
the model, bounds tools/shift_eval.py unless the loader has workers.

    python bench/bench_corruption.py [--corruptions NAME ...] [--repeats 2]
"""
import argparse
import os.path as osp
import sys

import numpy as np
import torch
from mmengine.config import Config

from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from cals_seg.datasets.demo_data import _draw_sample  # noqa: E402
from cals_seg.datasets.transforms import CORRUPTIONS, corrupt_image  # noqa: E402
from common import time_side_by_side  # noqa: E402

HEIGHT, WIDTH = 512, 1024


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--corruptions', nargs='+', default=list(CORRUPTIONS),
                        choices=CORRUPTIONS, metavar='NAME')
    parser.add_argument('--severity', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=2)
    return parser.parse_args()


def main():
    args = parse_args()
    register_all_modules()
    torch.manual_seed(0)
    cfg = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'models',
                                   'deeplabv3_r18tiny.py'))
    model = MODELS.build(cfg.model).eval()
    # Two demo scenes side by side: a textured 512 x 1024 RGB image.
    rng = np.random.default_rng(0)
    image = np.concatenate([_draw_sample(rng, HEIGHT)[0] for _ in range(2)], 1)
    inputs = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    metas = [dict(img_shape=(HEIGHT, WIDTH), ori_shape=(HEIGHT, WIDTH))]

    def forward():
        with torch.no_grad():
            return model.encode_decode(inputs, metas)

    functions = {'forward': forward}
    for name in args.corruptions:
        functions[name] = (lambda name=name: corrupt_image(
            image, name, args.severity, seed=0))
    seconds = time_side_by_side(functions, args.repeats)
    print(f'{HEIGHT} x {WIDTH}, severity {args.severity}, {torch.get_num_threads()} '
          f'torch threads; fastest of {args.repeats} after a warm-up')
    print(f'{"":<20}{"seconds":>10}{"x forward":>12}')
    for name, value in seconds.items():
        print(f'{name:<20}{value:>10.3f}{value / seconds["forward"]:>12.2f}')


if __name__ == '__main__':
    main()
