"""Breathing during the scan on the real whole HU series (simulated motion of the lung bases, up to an amplitude).

    python benchmarks/breathing_motion.py [--data DIR] [--json OUT] [--only NAME ...] [--amplitude MM ...]
                                          [--profile linear|step]

Each real chest series of covid-ct-md (P001, cap001, normal001) and LIDC-IDRI-0001 is analysed as it is and with
breathing of each amplitude (``covidct.evaluate.motion.breathing_motion_simulated``: each slice's views taken of
anatomy moving along the body's axis, steadily or at once halfway, by 0 mm at the apex up to the amplitude at the lung
bases; no lesion added), with
the same row as ``benchmarks/metal_implants.py`` (on the healthy series every lesion mL is false). About 2 minutes per
series and amplitude on two cores. Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse

from bench_io import emit_json, real_series_args, simulated_rows  # noqa: E402  (the script's folder is on sys.path)


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--amplitude", type=float, nargs="+", default=[5.0, 10.0, 20.0],
                    help="how far the lung bases move during a slice's rotation (mm), one case each")
    ap.add_argument("--profile", choices=["linear", "step"], default="linear",
                    help="steady motion over the views, or the second half of them moved at once (the harshest)")


def main() -> int:
    parsed = real_series_args(__doc__, _options)
    if parsed is None:
        return 0
    args, data = parsed
    from covidct.evaluate.motion import breathing_motion_simulated

    simulations = [(f"breathing ({args.profile}), bases moving {a:g} mm",
                    lambda ct, a=a: (breathing_motion_simulated(ct, a, args.profile), None)) for a in args.amplitude]
    rows = simulated_rows(data, args.only, simulations, None)  # the motion reaches every lung slice
    return emit_json({"rows": rows, "amplitude_mm": args.amplitude, "profile": args.profile}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
