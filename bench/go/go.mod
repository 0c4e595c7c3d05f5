module dchan/bench/go

go 1.19
