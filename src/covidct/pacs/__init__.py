"""PACS integration over DICOMweb: pull a study (QIDO-RS / WADO-RS), push covidct's SEG and SR back (STOW-RS),
and watch a PACS for new CT studies.

* :mod:`covidct.pacs.client`: the connection (auth from env vars or a file, TLS, timeouts, retries with
  back-off) and one-line errors.
* :mod:`covidct.pacs.transfer`: pull a study's CT series into a temp folder, find covidct's results in a study,
  push results with stable UIDs.
* :mod:`covidct.pacs.study`: one study from the PACS, analysed and pushed back (used by ``analyze --pacs``
  and ``watch``).
* :mod:`covidct.pacs.watch`: the polling loop, its persisted state and atomic claims.
* :mod:`covidct.pacs.orthanc`: a private throwaway Orthanc (tests, benchmarks, trying covidct).
"""
