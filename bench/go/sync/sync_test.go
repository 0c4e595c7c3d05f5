// Go's sync, sync/atomic and `go` on the workloads of bench/sync_bench.cc,
// as the reference dchan is measured against. One op = one operation (one
// lock+unlock, one add+done, one goroutine, one load).
//
//	cd bench/go && GOMAXPROCS=2 go test -run '^$' -bench Sync -count 5 ./sync
//
// bench/run_sync.sh runs these next to sync_bench and tabulates both.
package syncbench

import (
	"sync"
	"sync/atomic"
	"testing"
)

// lock(); counter++; unlock() on one goroutine.
func BenchmarkSyncMutexUncontended(b *testing.B) {
	var mu sync.Mutex
	counter := 0
	for i := 0; i < b.N; i++ {
		mu.Lock()
		counter++
		mu.Unlock()
	}
	_ = counter
}

// n goroutines share the b.N lock+increment+unlock operations.
func mutexContended(b *testing.B, n int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	counter := 0
	start := make(chan struct{})
	for g := 0; g < n; g++ {
		ops := b.N / n
		if g < b.N%n {
			ops++
		}
		wg.Add(1)
		go func(ops int) {
			defer wg.Done()
			<-start
			for i := 0; i < ops; i++ {
				mu.Lock()
				counter++
				mu.Unlock()
			}
		}(ops)
	}
	b.ResetTimer()
	close(start)
	wg.Wait()
}

func BenchmarkSyncMutexContended2(b *testing.B) { mutexContended(b, 2) }
func BenchmarkSyncMutexContended4(b *testing.B) { mutexContended(b, 4) }

func BenchmarkSyncWaitGroupAddDone(b *testing.B) {
	var wg sync.WaitGroup
	for i := 0; i < b.N; i++ {
		wg.Add(1)
		wg.Done()
	}
}

// Start one goroutine and wait for it.
func BenchmarkSyncGoSpawnWait(b *testing.B) {
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { wg.Done() }()
		wg.Wait()
	}
}

// Start 64 goroutines, then wait for all; per goroutine.
func BenchmarkSyncGoSpawn64Wait(b *testing.B) {
	for done := 0; done < b.N; done += 64 {
		var wg sync.WaitGroup
		wg.Add(64)
		for i := 0; i < 64; i++ {
			go func() { wg.Done() }()
		}
		wg.Wait()
	}
}

// Only the go statement; the goroutines are waited for untimed.
func BenchmarkSyncGoLaunch(b *testing.B) {
	var wg sync.WaitGroup
	wg.Add(b.N)
	for i := 0; i < b.N; i++ {
		go func() { wg.Done() }()
	}
	b.StopTimer()
	wg.Wait()
}

// Load while another goroutine stores continuously.
func BenchmarkSyncAtomicValueLoad(b *testing.B) {
	var v atomic.Value
	v.Store(int64(0))
	var stop atomic.Bool
	stopped := make(chan struct{})
	go func() {
		for i := int64(1); !stop.Load(); i++ {
			v.Store(i)
		}
		close(stopped)
	}()
	var sum int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sum += v.Load().(int64)
	}
	b.StopTimer()
	stop.Store(true)
	<-stopped
	_ = sum
}
