"""Print the whole config that tools/train.py would train: mmseg's
tools/misc/print_config.py, with --method and --method-options, and --dump FILE
in place of its fixed example.py."""
import stack_warnings  # noqa: F401  (first: tools/stack_warnings.py)

import argparse

import cals_seg  # noqa: F401  (registers the plugin)

from cals_seg.utils.cli import add_config_arguments, build_config


def parse_args():
    parser = argparse.ArgumentParser(description='Print the whole config')
    parser.add_argument('config', help='config file path')
    add_config_arguments(parser)
    parser.add_argument(
        '--dump',
        metavar='FILE',
        help='also write the config to FILE (.py, .json or .yaml)')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = build_config(args)
    print(f'Config:\n{cfg.pretty_text}')
    if args.dump:
        cfg.dump(args.dump)


if __name__ == '__main__':
    main()
