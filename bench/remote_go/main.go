// Command remote_go runs the Go-client baselines of bench/run_baselines.sh
// (issue 7) against servers the script started on loopback: NATS
// request-reply and pub/sub with nats.go, etcd put, the etcd lock API
// (clientv3/concurrency.Mutex) and `etcdctl lock` cycles. Every message
// carries a 100-byte payload.
//
// It is built offline from Debian's Go packages in GOPATH mode (this
// directory has no go.mod on purpose; see bench/run_baselines.sh):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o remote_go ./bench/remote_go
//
// Usage:
//
//	remote_go [flags] WORKLOAD
//
// WORKLOAD is one of
//
//	nats-rr       request-reply round trip: a requester connection calls
//	              Request on a subject, a responder on a second connection,
//	              in a process of its own (this program re-executed as
//	              nats-responder: issue 7's hand-off is "between two
//	              processes"), replies with the same payload
//	nats-pubsub   one-way throughput: a publisher connection publishes -n
//	              messages, a subscriber connection in a process of its own
//	              (this program re-executed as nats-subscriber, as dchan's
//	              stream rows run their consumer) receives them; time from
//	              the first Publish to the subscriber's report that the
//	              last message arrived (one pipe write and read)
//	nats-pubsub-one-process  (diagnostic) the same with both connections
//	              in this process: how nats-pubsub ran until session 22
//	etcd-put      one Put of a 100-byte value, waiting for its response
//	etcd-lock     concurrency.Mutex Lock then Unlock, uncontended, on one
//	              session (lease) created before timing
//	etcdctl       wall time of `etcdctl lock NAME true` (acquire, run true,
//	              release) and, for reference, of `etcdctl put KEY VALUE`:
//	              a process start, a connection and the requests each
//
// Output: one JSON object per line and repetition on stdout, e.g.
//
//	{"bench":"nats_rr","rep":1,"ops":2000,"us_per_op":131.2,"p50_us":128.4,"p99_us":210.7}
//	{"bench":"nats_pubsub","rep":1,"ops":200000,"msgs_per_s":2101234}
//
// Every latency workload times each op; us_per_op is the mean, p50/p99 the
// percentiles of that repetition. Errors go to stderr with a non-zero exit.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

const payloadBytes = 100

var (
	natsURL   = flag.String("nats", "", "NATS URL, e.g. nats://127.0.0.1:4222")
	etcdAddr  = flag.String("etcd", "", "etcd client endpoint, e.g. 127.0.0.1:2379")
	etcdctl   = flag.String("etcdctl", "etcdctl", "the etcdctl binary")
	reps      = flag.Int("reps", 5, "repetitions")
	n         = flag.Int("n", 0, "ops per repetition (0: the workload's default)")
	warmup    = flag.Int("warmup", 0, "untimed ops before each repetition (0: the workload's default)")
	tag       = flag.String("tag", "", "appended to every record's bench name (e.g. _tmpfs)")
	opTimeout = 10 * time.Second
)

type record struct {
	Bench    string   `json:"bench"`
	Rep      int      `json:"rep"`
	Ops      int      `json:"ops"`
	UsPerOp  *float64 `json:"us_per_op,omitempty"`
	P50Us    *float64 `json:"p50_us,omitempty"`
	P99Us    *float64 `json:"p99_us,omitempty"`
	MsgsPerS *float64 `json:"msgs_per_s,omitempty"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "remote_go: "+format+"\n", args...)
	os.Exit(1)
}

func emit(r record) {
	r.Bench += *tag
	b, err := json.Marshal(r)
	if err != nil {
		fail("json: %v", err)
	}
	fmt.Println(string(b))
}

// latencyRecord turns per-op durations into a record (mean, p50, p99).
func latencyRecord(bench string, rep int, d []time.Duration) record {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	sorted := append([]time.Duration(nil), d...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	at := func(q float64) float64 {
		i := int(q * float64(len(sorted)))
		if i >= len(sorted) {
			i = len(sorted) - 1
		}
		return float64(sorted[i].Nanoseconds()) / 1e3
	}
	mean := float64(sum.Nanoseconds()) / 1e3 / float64(len(d))
	p50, p99 := at(0.50), at(0.99)
	return record{Bench: bench, Rep: rep, Ops: len(d), UsPerOp: &mean, P50Us: &p50, P99Us: &p99}
}

// timeOps runs op `warm` times untimed, then `count` times timed, once per
// repetition, emitting one latency record per repetition.
func timeOps(bench string, count, warm int, op func() error) {
	for rep := 1; rep <= *reps; rep++ {
		for i := 0; i < warm; i++ {
			if err := op(); err != nil {
				fail("%s warm-up: %v", bench, err)
			}
		}
		d := make([]time.Duration, 0, count)
		for i := 0; i < count; i++ {
			t0 := time.Now()
			if err := op(); err != nil {
				fail("%s: %v", bench, err)
			}
			d = append(d, time.Since(t0))
		}
		emit(latencyRecord(bench, rep, d))
	}
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func natsConnect() *nats.Conn {
	if *natsURL == "" {
		fail("-nats is required")
	}
	nc, err := nats.Connect(*natsURL, nats.Timeout(opTimeout))
	if err != nil {
		fail("nats connect %s: %v", *natsURL, err)
	}
	return nc
}

// natsResponder replies to every request on subject with its payload; it
// prints "ready" once the subscription is registered at the server, then
// serves until its stdin is closed (the requester's end).
func natsResponder(subject string) {
	responder := natsConnect()
	defer responder.Close()
	if _, err := responder.Subscribe(subject, func(m *nats.Msg) {
		if err := m.Respond(m.Data); err != nil {
			fmt.Fprintf(os.Stderr, "remote_go: respond: %v\n", err)
		}
	}); err != nil {
		fail("subscribe: %v", err)
	}
	// The subscription is registered at the server once Flush returns.
	if err := responder.Flush(); err != nil {
		fail("flush: %v", err)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

// partner is this program re-executed as `mode subject` (nats-rr's
// responder, nats-pubsub's subscriber), talking to this one by lines on its
// stdin and stdout.
type partner struct {
	mode  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its stdout, line by line; closed at its end
}

// startPartner starts it and waits for its "ready" line.
func startPartner(mode, subject string) *partner {
	self, err := os.Executable()
	if err != nil {
		fail("os.Executable: %v", err)
	}
	p := &partner{mode: mode, lines: make(chan string, 16)}
	p.cmd = exec.Command(self, "-nats", *natsURL, mode, subject)
	p.cmd.Stderr = os.Stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		fail("%s stdin: %v", mode, err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		fail("%s stdout: %v", mode, err)
	}
	if err := p.cmd.Start(); err != nil {
		fail("start the %s: %v", mode, err)
	}
	go func() {
		in := bufio.NewScanner(stdout)
		for in.Scan() {
			p.lines <- in.Text()
		}
		close(p.lines)
	}()
	p.expect("ready", 30*time.Second)
	return p
}

// expect waits up to `within` for the partner's next line, which must be
// `line`.
func (p *partner) expect(line string, within time.Duration) {
	select {
	case got, ok := <-p.lines:
		if !ok || got != line {
			fail("the %s said %q (ended: %v), not %q", p.mode, got, !ok, line)
		}
	case <-time.After(within):
		fail("the %s did not say %q within %v", p.mode, line, within)
	}
}

// stop closes the partner's stdin (its loop ends there) and waits for it.
func (p *partner) stop() {
	p.stdin.Close()
	p.cmd.Wait()
}

func natsRequestReply() {
	subject := fmt.Sprintf("bench.echo.%d", os.Getpid())
	responder := startPartner("nats-responder", subject)
	defer responder.stop()
	requester := natsConnect()
	defer requester.Close()
	payload := make([]byte, payloadBytes)
	timeOps("nats_rr", orDefault(*n, 2000), orDefault(*warmup, 100), func() error {
		m, err := requester.Request(subject, payload, opTimeout)
		if err == nil && len(m.Data) != payloadBytes {
			err = fmt.Errorf("reply of %d bytes", len(m.Data))
		}
		return err
	})
}

// counted is a subscription that counts its messages towards a target.
type counted struct {
	sub         *nats.Subscription
	got, target int64
}

// subscribeCounted subscribes nc to subject and calls reached (on the
// subscription's goroutine) each time the messages since the last arm()
// reach its target. No client-side drops: a dropped message would never
// arrive, and the repetition would time out instead of reporting a wrong
// rate. It returns once the subscription is registered at the server.
func subscribeCounted(nc *nats.Conn, subject string, reached func()) *counted {
	c := &counted{}
	var err error
	c.sub, err = nc.Subscribe(subject, func(m *nats.Msg) {
		if len(m.Data) != payloadBytes {
			fail("a message of %d bytes on %s", len(m.Data), subject)
		}
		if atomic.AddInt64(&c.got, 1) == atomic.LoadInt64(&c.target) {
			reached()
		}
	})
	if err != nil {
		fail("subscribe: %v", err)
	}
	if err := c.sub.SetPendingLimits(-1, -1); err != nil {
		fail("pending limits: %v", err)
	}
	if err := nc.Flush(); err != nil {
		fail("flush: %v", err)
	}
	return c
}

// arm starts counting afresh towards k messages; no message may be in
// flight.
func (c *counted) arm(k int64) {
	atomic.StoreInt64(&c.got, 0)
	atomic.StoreInt64(&c.target, k)
}

// missing says how many of k messages have not arrived, and how many the
// client dropped.
func (c *counted) missing(k int) string {
	dropped, _ := c.sub.Dropped()
	return fmt.Sprintf("%d of %d messages arrived (%d dropped)", atomic.LoadInt64(&c.got), k, dropped)
}

// publishAll publishes k payloads on subject and flushes them to the
// server.
func publishAll(pub *nats.Conn, subject string, k int) {
	payload := make([]byte, payloadBytes)
	for i := 0; i < k; i++ {
		if err := pub.Publish(subject, payload); err != nil {
			fail("publish: %v", err)
		}
	}
	if err := pub.Flush(); err != nil {
		fail("flush: %v", err)
	}
}

// natsSubscriber counts the messages on subject: it prints "ready" once the
// subscription is registered at the server; then, for each count K read
// from stdin (a line), it starts counting afresh, prints "armed", and
// prints "done" once K messages have arrived. Ends at EOF on stdin.
func natsSubscriber(subject string) {
	nc := natsConnect()
	defer nc.Close()
	c := subscribeCounted(nc, subject, func() { fmt.Println("done") })
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	k := int64(0)
	for in.Scan() {
		var err error
		k, err = strconv.ParseInt(in.Text(), 10, 64)
		if err != nil || k <= 0 {
			fail("nats-subscriber: bad count %q", in.Text())
		}
		// The publisher waits for "armed": no message is in flight now.
		c.arm(k)
		fmt.Println("armed")
	}
	// The publisher is done, or gave up on a "done" that never came: say
	// what arrived of the last count.
	if atomic.LoadInt64(&c.got) < k {
		fmt.Fprintf(os.Stderr, "nats-subscriber: %s\n", c.missing(int(k)))
	}
}

func natsPubSub() {
	count := orDefault(*n, 200000)
	subject := fmt.Sprintf("bench.stream.%d", os.Getpid())
	subscriber := startPartner("nats-subscriber", subject)
	defer subscriber.stop()
	pub := natsConnect()
	defer pub.Close()
	publish := func(k int) time.Duration {
		if _, err := fmt.Fprintf(subscriber.stdin, "%d\n", k); err != nil {
			fail("nats-subscriber stdin: %v", err)
		}
		subscriber.expect("armed", 30*time.Second)
		t0 := time.Now()
		publishAll(pub, subject, k)
		subscriber.expect("done", 60*time.Second)
		return time.Since(t0)
	}
	publish(orDefault(*warmup, 10000))
	for rep := 1; rep <= *reps; rep++ {
		rate := float64(count) / publish(count).Seconds()
		emit(record{Bench: "nats_pubsub", Rep: rep, Ops: count, MsgsPerS: &rate})
	}
}

func natsPubSubOneProcess() {
	count := orDefault(*n, 200000)
	pub, subConn := natsConnect(), natsConnect()
	defer pub.Close()
	defer subConn.Close()
	done := make(chan struct{}, 1)
	c := subscribeCounted(subConn, "bench.stream", func() { done <- struct{}{} })
	publish := func(k int) time.Duration {
		c.arm(int64(k))
		t0 := time.Now()
		publishAll(pub, "bench.stream", k)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			fail("nats_pubsub_one_process: %s", c.missing(k))
		}
		return time.Since(t0)
	}
	publish(orDefault(*warmup, 10000))
	for rep := 1; rep <= *reps; rep++ {
		rate := float64(count) / publish(count).Seconds()
		emit(record{Bench: "nats_pubsub_one_process", Rep: rep, Ops: count, MsgsPerS: &rate})
	}
}

func etcdClient() *clientv3.Client {
	if *etcdAddr == "" {
		fail("-etcd is required")
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{*etcdAddr}, DialTimeout: opTimeout})
	if err != nil {
		fail("etcd connect %s: %v", *etcdAddr, err)
	}
	return c
}

func etcdPut() {
	c := etcdClient()
	defer c.Close()
	value := string(make([]byte, payloadBytes))
	timeOps("etcd_put", orDefault(*n, 500), orDefault(*warmup, 20), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		_, err := c.Put(ctx, "/bench/put", value)
		return err
	})
}

func etcdLock() {
	c := etcdClient()
	defer c.Close()
	s, err := concurrency.NewSession(c, concurrency.WithTTL(60))
	if err != nil {
		fail("etcd session: %v", err)
	}
	defer s.Close()
	m := concurrency.NewMutex(s, "/bench/lock")
	timeOps("etcd_lock", orDefault(*n, 300), orDefault(*warmup, 10), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := m.Lock(ctx); err != nil {
			return err
		}
		return m.Unlock(ctx)
	})
}

func etcdctlCycles() {
	if *etcdAddr == "" {
		fail("-etcd is required")
	}
	endpoint := "--endpoints=" + *etcdAddr
	run := func(args ...string) func() error {
		return func() error {
			out, err := exec.Command(*etcdctl, append([]string{endpoint}, args...)...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%s %v: %v: %s", *etcdctl, args, err, out)
			}
			return nil
		}
	}
	count, warm := orDefault(*n, 20), orDefault(*warmup, 2)
	timeOps("etcdctl_lock", count, warm, run("lock", "/bench/ctl-lock", "true"))
	timeOps("etcdctl_put", count, warm, run("put", "/bench/ctl-put", strings.Repeat("x", payloadBytes)))
}

func main() {
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: remote_go [flags] nats-rr|nats-pubsub|nats-pubsub-one-process|etcd-put|etcd-lock|etcdctl\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	partnerMode := flag.Arg(0) == "nats-responder" || flag.Arg(0) == "nats-subscriber"
	if flag.NArg() < 1 || (flag.NArg() > 1 && !partnerMode) || *reps < 1 {
		flag.Usage()
		os.Exit(2)
	}
	switch flag.Arg(0) {
	case "nats-rr":
		natsRequestReply()
	case "nats-responder": // nats-rr's other process
		if flag.NArg() != 2 {
			flag.Usage()
			os.Exit(2)
		}
		natsResponder(flag.Arg(1))
	case "nats-subscriber": // nats-pubsub's other process
		if flag.NArg() != 2 {
			flag.Usage()
			os.Exit(2)
		}
		natsSubscriber(flag.Arg(1))
	case "nats-pubsub":
		natsPubSub()
	case "nats-pubsub-one-process":
		natsPubSubOneProcess()
	case "etcd-put":
		etcdPut()
	case "etcd-lock":
		etcdLock()
	case "etcdctl":
		etcdctlCycles()
	default:
		flag.Usage()
		os.Exit(2)
	}
}
