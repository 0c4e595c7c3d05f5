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
	"time"
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

// n goroutines share the b.N lock+increment+unlock operations, with
// `work` of busy time inside the lock and as much after it (none: 0).
func mutexContended(b *testing.B, n int, work time.Duration) {
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
				if work > 0 {
					busyFor(work)
				}
				mu.Unlock()
				if work > 0 {
					busyFor(work)
				}
			}
		}(ops)
	}
	b.ResetTimer()
	close(start)
	wg.Wait()
}

// busyFor keeps the goroutine running for d.
func busyFor(d time.Duration) {
	for until := time.Now().Add(d); time.Now().Before(until); {
	}
}

func BenchmarkSyncMutexContended2(b *testing.B) { mutexContended(b, 2, 0) }
func BenchmarkSyncMutexContended4(b *testing.B) { mutexContended(b, 4, 0) }

// Lock, ~3 us of work, unlock, ~3 us of work (sync_bench's mutex_held_2).
func BenchmarkSyncMutexHeld2(b *testing.B) {
	mutexContended(b, 2, 3*time.Microsecond)
}

func BenchmarkSyncWaitGroupAddDone(b *testing.B) {
	var wg sync.WaitGroup
	for i := 0; i < b.N; i++ {
		wg.Add(1)
		wg.Done()
	}
}

// Two goroutines hand a turn back and forth through WaitGroups: A Done()s
// a[i] and Wait()s on b[i], B Wait()s on a[i] and Done()s b[i] (every group
// starts at 1). One op = one round trip (two wake-ups). Batches of 4096 as
// in sync_bench; making a batch's groups is not timed.
func BenchmarkSyncWaitGroupWake(b *testing.B) {
	const batch = 4096
	b.StopTimer()
	for done := 0; done < b.N; done += batch {
		k := batch
		if b.N-done < k {
			k = b.N - done
		}
		wa := make([]sync.WaitGroup, k)
		wb := make([]sync.WaitGroup, k)
		for i := 0; i < k; i++ {
			wa[i].Add(1)
			wb[i].Add(1)
		}
		b.StartTimer()
		go func() {
			for i := 0; i < k; i++ {
				wa[i].Wait()
				wb[i].Done()
			}
		}()
		for i := 0; i < k; i++ {
			wa[i].Done()
			wb[i].Wait()
		}
		b.StopTimer()
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

// The values stored: an int64, or a 32-byte struct (dchan's _wide rows).
type wide struct{ a, b, c, d int64 }

func int64Value(i int64) any { return i }
func wideValue(i int64) any  { return wide{i, i, i, i} }

func sumOf(v any) int64 {
	if w, ok := v.(wide); ok {
		return w.a + w.d
	}
	return v.(int64)
}

// Load while another goroutine stores continuously.
func BenchmarkSyncAtomicValueLoad(b *testing.B)     { benchLoad(b, int64Value) }
func BenchmarkSyncAtomicValueLoadWide(b *testing.B) { benchLoad(b, wideValue) }

func benchLoad(b *testing.B, value func(int64) any) {
	var v atomic.Value
	v.Store(value(0))
	var stop atomic.Bool
	stopped := make(chan struct{})
	go func() {
		for i := int64(1); !stop.Load(); i++ {
			v.Store(value(i))
		}
		close(stopped)
	}()
	var sum int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sum += sumOf(v.Load())
	}
	b.StopTimer()
	stop.Store(true)
	<-stopped
	_ = sum
}

// Load from two goroutines at once, no writer: do readers scale? ns/op
// counts both goroutines' loads (as dchan's _2readers rows do).
func BenchmarkSyncAtomicValueLoad2Readers(b *testing.B) { benchTwoReaders(b, int64Value) }
func BenchmarkSyncAtomicValueLoad2ReadersWide(b *testing.B) {
	benchTwoReaders(b, wideValue)
}

func benchTwoReaders(b *testing.B, value func(int64) any) {
	var v atomic.Value
	v.Store(value(1))
	const readers = 2
	var wg sync.WaitGroup
	wg.Add(readers)
	b.ResetTimer()
	for r := 0; r < readers; r++ {
		go func(n int) {
			var sum int64
			for i := 0; i < n; i++ {
				sum += sumOf(v.Load())
			}
			atomic.AddInt64(&sinkInt, sum)
			wg.Done()
		}(b.N / readers)
	}
	wg.Wait()
}

// Store while another goroutine loads continuously.
func BenchmarkSyncAtomicValueStore(b *testing.B)     { benchStore(b, int64Value) }
func BenchmarkSyncAtomicValueStoreWide(b *testing.B) { benchStore(b, wideValue) }

func benchStore(b *testing.B, value func(int64) any) {
	var v atomic.Value
	v.Store(value(0))
	var stop atomic.Bool
	stopped := make(chan struct{})
	go func() {
		var sum int64
		for !stop.Load() {
			sum += sumOf(v.Load())
		}
		sinkInt = sum
		close(stopped)
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v.Store(value(int64(i)))
	}
	b.StopTimer()
	stop.Store(true)
	<-stopped
}

var sinkInt int64
