from covidct.cli import run

run()
