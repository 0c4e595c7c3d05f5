// Go's channels on the workloads of bench/chan_bench.cc, as the reference
// dchan is measured against. One op = one round trip (ping-pong) or one item.
//
//	GOMAXPROCS=2 go test -run '^$' -bench Chan -count 5
//
// bench/run_chan.sh runs these next to chan_bench and tabulates both.
package bench

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

const bufferCap = 64

// A sends on ping, B receives and sends it back on pong (unbuffered).
func BenchmarkChanPingPong(b *testing.B) { benchPingPong(b, false) }

// The *LockedThreads variants run each goroutine on its own OS thread
// (runtime.LockOSThread), as dchan runs every goroutine: a hand-off then
// wakes another thread instead of switching goroutines on one P. They show
// what Go's channels cost under dchan's threading model.
func BenchmarkChanPingPongLockedThreads(b *testing.B) { benchPingPong(b, true) }

// lockThread wires the calling goroutine to its OS thread if `locked`; the
// returned function undoes it.
func lockThread(locked bool) func() {
	if !locked {
		return func() {}
	}
	runtime.LockOSThread()
	return runtime.UnlockOSThread
}

func benchPingPong(b *testing.B, locked bool) {
	defer lockThread(locked)()
	ping := make(chan int)
	pong := make(chan int)
	go func() {
		defer lockThread(locked)()
		for v := range ping {
			pong <- v
		}
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ping <- i
		<-pong
	}
	b.StopTimer()
	close(ping)
}

// One producer, one consumer, one way, unbuffered (a send returns once the
// receiver took the value).
func BenchmarkChanUnbuffered1P1C(b *testing.B) {
	run1P1C(b, make(chan int), false)
}

func BenchmarkChanUnbuffered1P1CLockedThreads(b *testing.B) {
	run1P1C(b, make(chan int), true)
}

func BenchmarkChanBuffered1P1C(b *testing.B) {
	run1P1C(b, make(chan int, bufferCap), false)
}

func BenchmarkChanBuffered1P1CLockedThreads(b *testing.B) {
	run1P1C(b, make(chan int, bufferCap), true)
}

// run1P1C: one goroutine sends b.N values on ch, this one receives them.
func run1P1C(b *testing.B, ch chan int, locked bool) {
	defer lockThread(locked)()
	n := b.N
	b.ResetTimer()
	go func() {
		defer lockThread(locked)()
		for i := 0; i < n; i++ {
			ch <- i
		}
	}()
	sum := 0
	for i := 0; i < n; i++ {
		sum += <-ch
	}
	b.StopTimer()
	sink = sum
}

// Two producers, two consumers; the last producer closes, consumers drain.
func BenchmarkChanBuffered2P2C(b *testing.B) {
	ch := make(chan int, bufferCap)
	var producersLeft int32 = 2
	produce := func(count int) {
		for i := 0; i < count; i++ {
			ch <- i
		}
		if atomic.AddInt32(&producersLeft, -1) == 0 {
			close(ch)
		}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	consume := func() {
		s := 0
		for v := range ch {
			s += v
		}
		sinkMu.Lock()
		sink += s
		sinkMu.Unlock()
	}
	b.ResetTimer()
	go produce(b.N / 2)
	go produce(b.N - b.N/2)
	go func() { defer wg.Done(); consume() }()
	consume()
	wg.Wait()
	b.StopTimer()
}

// One producer feeds 4 buffered channels round-robin; the receiver selects.
func BenchmarkChanSelect4FanIn(b *testing.B) {
	var c [4]chan int
	for i := range c {
		c[i] = make(chan int, bufferCap)
	}
	n := b.N
	b.ResetTimer()
	go func() {
		for i := 0; i < n; i++ {
			c[i&3] <- i
		}
	}()
	sum := 0
	for i := 0; i < n; i++ {
		select {
		case v := <-c[0]:
			sum += v
		case v := <-c[1]:
			sum += v
		case v := <-c[2]:
			sum += v
		case v := <-c[3]:
			sum += v
		}
	}
	b.StopTimer()
	sink = sum
}

// The ping-pong with 2-case selects on both sides; quit never fires.
func BenchmarkChanSelectPingPong(b *testing.B) { benchSelectPingPong(b, false) }

func BenchmarkChanSelectPingPongLockedThreads(b *testing.B) {
	benchSelectPingPong(b, true)
}

func benchSelectPingPong(b *testing.B, locked bool) {
	defer lockThread(locked)()
	ping := make(chan int)
	pong := make(chan int)
	quit := make(chan struct{})
	n := b.N
	go func() {
		defer lockThread(locked)()
		for i := 0; i < n; i++ {
			var v int
			select {
			case v = <-ping:
			case <-quit:
				return
			}
			select {
			case pong <- v:
			case <-quit:
				return
			}
		}
	}()
	b.ResetTimer()
	sum := 0
	for i := 0; i < n; i++ {
		select {
		case ping <- i:
		case <-quit:
		}
		select {
		case v := <-pong:
			sum += v
		case <-quit:
		}
	}
	b.StopTimer()
	sink = sum
}

// One goroutine: a 2-case receive select with a default on two empty
// channels; the default fires.
func BenchmarkChanSelectNonblockEmpty(b *testing.B) {
	c1 := make(chan int)
	c2 := make(chan int)
	defaults := 0
	for i := 0; i < b.N; i++ {
		select {
		case <-c1:
		case <-c2:
		default:
			defaults++
		}
	}
	if defaults != b.N {
		b.Fatal("a case fired")
	}
}

// One goroutine; one op = a select {send; default} into a capacity-1 channel
// with room, then a select {recv; default} taking the value back.
func BenchmarkChanSelectNonblockReady(b *testing.B) {
	c := make(chan int, 1)
	sum, defaults := 0, 0
	for i := 0; i < b.N; i++ {
		select {
		case c <- i:
		default:
			defaults++
		}
		select {
		case v := <-c:
			sum += v
		default:
			defaults++
		}
	}
	if defaults != 0 {
		b.Fatal("a default fired")
	}
	sink = sum
}

var (
	sinkMu sync.Mutex
	sink   int
)
