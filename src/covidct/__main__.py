from covidct.entry import run

run()
