"""Write the generated demo dataset in the VOC or Cityscapes layout.

    python tools/make_demo_data.py                      # data/cals_demo/voc
    python tools/make_demo_data.py --layout cityscapes  # data/cals_demo/cityscapes
"""
import warnings

# mmengine 0.10.7 imports pkg_resources, which the pinned setuptools deprecates
# on every start: noise in a tool's one-line errors.
warnings.filterwarnings('ignore', 'pkg_resources is deprecated', UserWarning)

import argparse
import os.path as osp

from cals_seg.datasets.demo_data import LAYOUTS, make_demo_dataset


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--layout', choices=LAYOUTS, default='voc')
    parser.add_argument('--out', help='output folder (default: data/cals_demo/'
                        'LAYOUT, where the demo configs look)')
    parser.add_argument('--num-train', type=int, default=24)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    out = args.out or osp.join('data', 'cals_demo', args.layout)
    info = make_demo_dataset(out, args.layout, args.num_train, args.num_val,
                             args.size, args.seed)
    print(f"wrote {len(info['train'])} training and {len(info['val'])} validation "
          f"images ({args.layout} layout) under {info['data_root']}")


if __name__ == '__main__':
    main()
