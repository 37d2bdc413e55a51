"""Arms down (a patient scanned with the arms beside the chest) on the real whole HU series (simulated streaks).

    python benchmarks/arms_down.py [--data DIR] [--json OUT] [--only NAME ...] [--photons N ...]

Each real chest series of covid-ct-md (P001, cap001, normal001) and LIDC-IDRI-0001 is analysed as it is and with
both arms down at each X-ray dose (``covidct.evaluate.arms.arms_down_simulated``: what the arms add to the
reconstruction, photon starvation and the humeri's beam hardening; no lesion added), with the same row as
``benchmarks/metal_implants.py`` (on the healthy series every lesion mL is false). About 5 minutes per series and
dose on two cores. Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

from bench_io import emit_json, real_series_args, simulated_rows  # noqa: E402  (the script's folder is on sys.path)


def main() -> int:
    parsed = real_series_args(__doc__, lambda ap: ap.add_argument(
        "--photons", type=float, nargs="+", default=[1e5, 2e4],
        help="X-ray photons per ray before the patient, one case each"))
    if parsed is None:
        return 0
    args, data = parsed
    from covidct.evaluate.arms import arms_down_simulated

    simulations = [(f"arms down, {n:g} photons", lambda ct, n=n: arms_down_simulated(ct, photons=n))
                   for n in args.photons]
    rows = simulated_rows(data, args.only, simulations, None)  # the arms are beside every slice
    return emit_json({"rows": rows, "photons": args.photons}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
