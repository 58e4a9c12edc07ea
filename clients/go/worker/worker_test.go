package worker

// Tests of the sender and the extender against a scripted stream (no server): which messages go
// out, how outcomes are grouped, and in what order relative to drain and half-close. The e2e
// package runs the same worker against a real server.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
)

const wait = 5 * time.Second

// fakeStream records what the worker sends; the test pushes what the "server" answers.
type fakeStream struct {
	ctx  context.Context
	recv chan *jobqueuev1.LeaseResponse
	// onSend, if set, runs inside Send (under the worker's send lock) before it is recorded.
	onSend func(*jobqueuev1.LeaseRequest)
	// ackHeartbeats: answer each heartbeat the worker sends with one.
	ackHeartbeats bool

	mu        sync.Mutex
	log       []string // one entry per message sent, and "close" for CloseSend
	sentEvent chan struct{}
	closeOnce sync.Once
}

func newFake(ctx context.Context) *fakeStream {
	return &fakeStream{ctx: ctx, recv: make(chan *jobqueuev1.LeaseResponse, 100),
		sentEvent: make(chan struct{}, 1)}
}

func (f *fakeStream) Lease(context.Context, ...grpc.CallOption) (
	grpc.BidiStreamingClient[jobqueuev1.LeaseRequest, jobqueuev1.LeaseResponse], error) {
	return f, nil
}

func describe(m *jobqueuev1.LeaseRequest) string {
	ids := func(n int, id func(int) string) string {
		s := make([]string, n)
		for i := range s {
			s[i] = id(i)
		}
		return strings.Join(s, ",")
	}
	switch x := m.Msg.(type) {
	case *jobqueuev1.LeaseRequest_Open:
		return "open"
	case *jobqueuev1.LeaseRequest_Complete:
		return "complete:" + ids(len(x.Complete.Jobs), func(i int) string { return x.Complete.Jobs[i].JobId })
	case *jobqueuev1.LeaseRequest_Fail:
		return "fail:" + ids(len(x.Fail.Jobs), func(i int) string { return x.Fail.Jobs[i].JobId })
	case *jobqueuev1.LeaseRequest_Cancelled:
		return "cancelled:" + ids(len(x.Cancelled.Jobs), func(i int) string { return x.Cancelled.Jobs[i].JobId })
	case *jobqueuev1.LeaseRequest_Extend:
		return "extend:" + ids(len(x.Extend.Jobs), func(i int) string { return x.Extend.Jobs[i].JobId })
	case *jobqueuev1.LeaseRequest_Drain:
		return "drain"
	case *jobqueuev1.LeaseRequest_Heartbeat:
		return "heartbeat"
	case *jobqueuev1.LeaseRequest_Progress:
		return "progress:" + x.Progress.JobId
	}
	return "?"
}

func (f *fakeStream) record(s string) {
	f.mu.Lock()
	f.log = append(f.log, s)
	f.mu.Unlock()
	select {
	case f.sentEvent <- struct{}{}:
	default:
	}
}

func (f *fakeStream) Send(m *jobqueuev1.LeaseRequest) error {
	if f.onSend != nil {
		f.onSend(m)
	}
	f.record(describe(m))
	if f.ackHeartbeats && m.GetHeartbeat() != nil {
		f.recv <- &jobqueuev1.LeaseResponse{Msg: &jobqueuev1.LeaseResponse_Heartbeat{Heartbeat: &jobqueuev1.Heartbeat{}}}
	}
	return nil
}

// CloseSend: the "server" then ends the stream, as the real one does once the worker has
// half-closed with nothing leased.
func (f *fakeStream) CloseSend() error {
	f.record("close")
	f.closeOnce.Do(func() { f.recv <- nil })
	return nil
}

func (f *fakeStream) Recv() (*jobqueuev1.LeaseResponse, error) {
	select {
	case m := <-f.recv:
		if m == nil {
			return nil, io.EOF
		}
		return m, nil
	case <-f.ctx.Done():
		return nil, f.ctx.Err()
	}
}

func (f *fakeStream) Header() (metadata.MD, error) { return nil, nil }
func (f *fakeStream) Trailer() metadata.MD         { return nil }
func (f *fakeStream) Context() context.Context     { return f.ctx }
func (f *fakeStream) SendMsg(any) error            { return nil }
func (f *fakeStream) RecvMsg(any) error            { return nil }

func (f *fakeStream) sent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

// waitSent waits until some message sent satisfies ok, and returns the log.
func (f *fakeStream) waitSent(t *testing.T, what string, ok func(string) bool) []string {
	t.Helper()
	end := time.After(wait)
	for {
		log := f.sent()
		for _, s := range log {
			if ok(s) {
				return log
			}
		}
		select {
		case <-f.sentEvent:
		case <-end:
			t.Fatalf("never sent %s; sent %v", what, log)
		}
	}
}

func (f *fakeStream) push(jobs ...*jobqueuev1.LeasedJob) {
	f.recv <- &jobqueuev1.LeaseResponse{Msg: &jobqueuev1.LeaseResponse_Jobs{Jobs: &jobqueuev1.LeasedJobs{Jobs: jobs}}}
}

func leased(id string, lease time.Duration) *jobqueuev1.LeasedJob {
	return &jobqueuev1.LeasedJob{
		Job:        &jobqueuev1.Job{Id: id, Kind: "k", LeaseDuration: durationpb.New(lease)},
		LeaseToken: "t-" + id,
	}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

type running struct {
	w    *Worker
	f    *fakeStream
	stop context.CancelFunc
	done chan error
}

func start(t *testing.T, opts Options, h Handler, setup func(*fakeStream)) *running {
	t.Helper()
	streamCtx, cancelStream := context.WithCancel(context.Background())
	t.Cleanup(cancelStream)
	f := newFake(streamCtx)
	if setup != nil {
		setup(f)
	}
	opts.Logger = quiet()
	w := newWorker(opts, h)
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	r := &running{w: w, f: f, stop: stop, done: make(chan error, 1)}
	go func() { r.done <- w.run(ctx, f) }()
	f.waitSent(t, "open", func(s string) bool { return s == "open" })
	return r
}

func (r *running) finish(t *testing.T) []string {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(wait):
		t.Fatalf("run did not return; sent %v", r.f.sent())
	}
	return r.f.sent()
}

func countPrefix(log []string, prefix string) (messages int, ids []string) {
	for _, s := range log {
		if rest, ok := strings.CutPrefix(s, prefix); ok {
			messages++
			ids = append(ids, strings.Split(rest, ",")...)
		}
	}
	sort.Strings(ids)
	return messages, ids
}

func jobIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("j%03d", i)
	}
	sort.Strings(ids)
	return ids
}

// The first outcome goes out at once, alone; the outcomes of jobs finishing while it is being
// sent wait for that send and then travel together in one message per kind.
func TestOutcomesGroupCommit(t *testing.T) {
	const n = 101
	inFirstSend := make(chan struct{})
	letFirstSendGo := make(chan struct{})
	var once sync.Once
	release := make(chan struct{})
	h := func(ctx context.Context, job *Job) (*structpb.Struct, error) {
		if job.Id != "j000" {
			<-release
		}
		switch job.Id {
		case "j097", "j098":
			return nil, Permanent(fmt.Errorf("bad %s", job.Id))
		}
		return nil, nil
	}
	r := start(t, Options{MaxInFlight: n}, h, func(f *fakeStream) {
		f.ackHeartbeats = true
		f.onSend = func(m *jobqueuev1.LeaseRequest) {
			if m.GetComplete() != nil {
				once.Do(func() {
					close(inFirstSend)
					<-letFirstSendGo
				})
			}
		}
	})
	jobs := make([]*jobqueuev1.LeasedJob, n)
	for i := range jobs {
		jobs[i] = leased(fmt.Sprintf("j%03d", i), time.Minute)
	}
	r.f.push(jobs...)

	select {
	case <-inFirstSend: // j000's outcome is being sent before any other job has finished
	case <-time.After(wait):
		t.Fatal("the first outcome was not sent while the other jobs were still running")
	}
	close(release)
	// Every other job finishes and queues its outcome while the first send is held up.
	end := time.Now().Add(wait)
	for {
		r.w.mu.Lock()
		queued := len(r.w.completes) + len(r.w.fails)
		r.w.mu.Unlock()
		if queued == n-1 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%d outcomes queued, want %d", queued, n-1)
		}
		time.Sleep(time.Millisecond)
	}
	close(letFirstSendGo)
	r.f.waitSent(t, "the batched failures", func(s string) bool { return strings.HasPrefix(s, "fail:") })
	r.stop()
	log := r.finish(t)

	msgs, completed := countPrefix(log, "complete:")
	if msgs != 2 || log[1] != "complete:j000" {
		t.Fatalf("want complete:j000 then one message with the other completions; sent %v", log)
	}
	fmsgs, failed := countPrefix(log, "fail:")
	if fmsgs != 1 || strings.Join(failed, ",") != "j097,j098" {
		t.Fatalf("want one fail message for j097,j098; sent %v", log)
	}
	all := append(completed, failed...)
	sort.Strings(all)
	if strings.Join(all, ",") != strings.Join(jobIDs(n), ",") {
		t.Fatalf("outcomes for %d jobs, want each of %d once", len(all), n)
	}
	if log[len(log)-1] != "close" {
		t.Fatalf("the stream was not half-closed last: %v", log)
	}
}

// A drain half-closes the stream only after every running job's outcome is sent, and only once
// the server has answered the heartbeat sent after `drain`: a job pushed before the server read
// `drain` is still run and reported.
func TestDrainReportsBeforeHalfClose(t *testing.T) {
	release := make(chan struct{})
	h := func(ctx context.Context, job *Job) (*structpb.Struct, error) {
		if job.Id == "slow" {
			<-release
		}
		return nil, nil
	}
	r := start(t, Options{}, h, nil) // heartbeats are answered by hand below
	r.f.push(leased("slow", time.Minute))
	r.stop()
	r.f.waitSent(t, "heartbeat after drain", func(s string) bool { return s == "heartbeat" })

	// Still unanswered: a job already on its way arrives and is worked.
	r.f.push(leased("late", time.Minute))
	r.f.waitSent(t, "late's outcome", func(s string) bool { return s == "complete:late" })
	close(release)
	r.f.waitSent(t, "slow's outcome", func(s string) bool { return s == "complete:slow" })
	for _, s := range r.f.sent() {
		if s == "close" {
			t.Fatalf("half-closed before the drain was answered: %v", r.f.sent())
		}
	}
	r.f.recv <- &jobqueuev1.LeaseResponse{Msg: &jobqueuev1.LeaseResponse_Heartbeat{Heartbeat: &jobqueuev1.Heartbeat{}}}
	log := r.finish(t)
	want := []string{"open", "drain", "heartbeat", "complete:late", "complete:slow", "close"}
	if strings.Join(log, " ") != strings.Join(want, " ") {
		t.Fatalf("sent %v, want %v", log, want)
	}
}

// The server's `draining`: no ack to wait for; the last outcome goes out, then the half-close.
func TestServerDrainingReportsBeforeHalfClose(t *testing.T) {
	release := make(chan struct{})
	h := func(ctx context.Context, job *Job) (*structpb.Struct, error) {
		<-release
		return nil, fmt.Errorf("boom")
	}
	r := start(t, Options{}, h, nil)
	r.f.push(leased("a", time.Minute), leased("b", time.Minute))
	r.f.recv <- &jobqueuev1.LeaseResponse{Msg: &jobqueuev1.LeaseResponse_Draining{Draining: &jobqueuev1.Draining{}}}
	close(release)
	log := r.finish(t)
	n, failed := countPrefix(log, "fail:")
	if n < 1 || strings.Join(failed, ",") != "a,b" || log[len(log)-1] != "close" || log[len(log)-2][:5] != "fail:" {
		t.Fatalf("want the failures of a and b, then close; sent %v", log)
	}
}

// One timer extends every running job: jobs due together go in one LeaseExtend, and a job due
// sooner than the timer is set for (a shorter lease) wakes it.
func TestSharedExtender(t *testing.T) {
	release := make(chan struct{})
	h := func(ctx context.Context, job *Job) (*structpb.Struct, error) {
		<-release
		return nil, nil
	}
	r := start(t, Options{}, h, nil)
	r.f.push(leased("long", time.Hour))
	r.f.push(leased("s1", 200*time.Millisecond), leased("s2", 200*time.Millisecond))
	log := r.f.waitSent(t, "an extension of s1 and s2", func(s string) bool {
		return s == "extend:s1,s2" || s == "extend:s2,s1"
	})
	for _, s := range log {
		if strings.Contains(s, "long") {
			t.Fatalf("long (lease 1h) extended early: %v", log)
		}
	}
	close(release)
	r.stop()
	r.f.waitSent(t, "heartbeat after drain", func(s string) bool { return s == "heartbeat" })
	r.f.recv <- &jobqueuev1.LeaseResponse{Msg: &jobqueuev1.LeaseResponse_Heartbeat{Heartbeat: &jobqueuev1.Heartbeat{}}}
	log = r.finish(t)
	if _, ids := countPrefix(log, "complete:"); strings.Join(ids, ",") != "long,s1,s2" {
		t.Fatalf("sent %v", log)
	}
}
