"""Write the generated demo dataset in the VOC or Cityscapes layout.

    python tools/make_demo_data.py                      # data/cals_demo/voc
    python tools/make_demo_data.py --layout cityscapes  # data/cals_demo/cityscapes
    python tools/make_demo_data.py --domain shifted     # data/cals_demo/voc_shifted:
        # the test split's scenes under other conditions, for tools/shift_eval.py
"""
import stack_warnings  # noqa: F401  (first: tools/stack_warnings.py)

import argparse
import os.path as osp

from cals_seg.datasets.demo_data import DOMAINS, LAYOUTS, make_demo_dataset


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--layout', choices=LAYOUTS, default='voc')
    parser.add_argument('--domain', choices=DOMAINS, default='source',
                        help='source: training and test splits; shifted: the '
                        'test split only, same scenes and labels, other '
                        'lighting, palette, texture scale, blur and noise')
    parser.add_argument('--out', help='output folder (default: data/cals_demo/'
                        'LAYOUT, where the demo configs look; LAYOUT_shifted '
                        'for the shifted domain)')
    parser.add_argument('--num-train', type=int, default=60)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    folder = args.layout if args.domain == 'source' else f'{args.layout}_{args.domain}'
    out = args.out or osp.join('data', 'cals_demo', folder)
    info = make_demo_dataset(out, args.layout, args.num_train, args.num_val,
                             args.size, args.seed, args.domain)
    if args.domain == 'source':
        print(f"wrote {len(info['train'])} training and {len(info['val'])} "
              f"validation images ({args.layout} layout) under "
              f"{info['data_root']}")
    else:
        print(f"wrote {len(info['val'])} validation images ({args.layout} "
              f"layout, {args.domain} domain) under {info['data_root']}; "
              f"evaluate with tools/shift_eval.py CONFIG CHECKPOINT "
              f"--domain-root {info['data_root']}")


if __name__ == '__main__':
    main()
