// Package worker runs the client side of WorkerService.Lease: one bidirectional stream, jobs
// pushed by the server, each handled in its own goroutine, its outcome reported on the stream.
//
// The generated stubs in package jobqueuev1 are all a worker needs; this package only saves
// every worker from re-writing the same loop: outcomes sent in batches by one sender goroutine,
// lease extension while a handler runs, cancel notices turned into context cancellation, and a
// graceful drain when the caller's context ends or the server shuts down.
//
// Outcomes are group-committed: a finished job's outcome is sent at once when the sender is free;
// outcomes of jobs that finish while a send is under way wait for it and then go together, one
// LeaseComplete / LeaseFail / LeaseCancelled each. No timer delays a send. The server pays per
// message it reads, so under load this takes most of the per-job cost off it.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
)

// Job is one leased job as a handler sees it.
type Job struct {
	*jobqueuev1.Job
	// LeaseToken fences this attempt: outcomes carrying an older token are rejected.
	LeaseToken string
	w          *Worker
}

// Progress replaces the job's progress, visible in JobService.GetJob.
func (j *Job) Progress(p *structpb.Struct) error {
	return j.w.send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Progress{
		Progress: &jobqueuev1.LeaseProgress{JobId: j.Id, LeaseToken: j.LeaseToken, Progress: p},
	}})
}

// Handler runs one job. A nil error completes it with result (which may be nil); an error fails
// the attempt (see Permanent and RetryAfter). ctx ends when the job's cancel is requested; a
// handler that then returns ctx's error reports the job as cancelled.
type Handler func(ctx context.Context, job *Job) (result *structpb.Struct, err error)

// ErrCancelRequested is the cause of a handler's context ending after JobService.CancelJob.
var ErrCancelRequested = errors.New("jobqueue: cancel requested")

type classified struct {
	err   error
	class jobqueuev1.FailureClass
	after time.Duration
}

func (c *classified) Error() string { return c.err.Error() }
func (c *classified) Unwrap() error { return c.err }

// Permanent marks err as not worth retrying: the job goes to the dead-letter queue now.
func Permanent(err error) error {
	return &classified{err: err, class: jobqueuev1.FailureClass_FAILURE_CLASS_DO_NOT_RETRY}
}

// RetryAfter asks for the next attempt no sooner than d from now (attempts permitting).
func RetryAfter(err error, d time.Duration) error {
	return &classified{err: err, class: jobqueuev1.FailureClass_FAILURE_CLASS_RETRY_AFTER, after: d}
}

// Options configure a worker. Queues defaults to ["default"] (on the server).
type Options struct {
	WorkerID    string
	Queues      []string
	Kinds       []string
	MaxInFlight int32
	// ExtendEvery is how often a running job's lease is extended; default half the job's
	// lease_duration. Too long and leases expire under slow handlers (the job is retried
	// elsewhere while it still runs here). One timer serves every running job; a job due within
	// a quarter of its interval is extended along with one that is due, in the same LeaseExtend.
	ExtendEvery time.Duration
	Logger      *slog.Logger
}

// drainAckWait bounds the wait for the server's answer to the heartbeat sent after `drain`.
const drainAckWait = 5 * time.Second

// Worker is one Lease stream. Use Run unless you need the Worker value itself.
type Worker struct {
	opts    Options
	handler Handler
	log     *slog.Logger

	sendMu sync.Mutex
	stream grpc.BidiStreamingClient[jobqueuev1.LeaseRequest, jobqueuev1.LeaseResponse]
	closed bool

	mu      sync.Mutex
	running map[string]*runningJob
	// draining: take no more jobs; once nothing runs (and drainAck is not awaited) the sender
	// sends what is left and half-closes the stream.
	draining bool
	// awaitingAck: `drain` and a heartbeat were sent; until the heartbeat's answer is in, jobs
	// the server pushed before it read `drain` may still be on their way.
	awaitingAck bool
	// What the sender sends next, one message of each kind (extensions first).
	extends   []*jobqueuev1.ExtendedJob
	completes []*jobqueuev1.CompletedJob
	fails     []*jobqueuev1.FailedJob
	cancelled []*jobqueuev1.CancelledJob
	wake      chan struct{} // capacity 1: the sender has something to look at
	// extendAt is when the extender next looks at leases; zero while nothing runs.
	extendAt   time.Time
	extendWake chan struct{} // capacity 1: a job due sooner than extendAt started

	wg sync.WaitGroup
}

type runningJob struct {
	job    *Job
	cancel context.CancelCauseFunc
	every  time.Duration // how often its lease is extended
	next   time.Time     // when it is next extended
}

// Run opens a Lease stream on conn and works jobs until ctx ends or the server drains.
// Either way it stops taking jobs, lets running handlers finish and report, and returns nil
// once the server closes the stream; call it again to reconnect. Any other stream error is
// returned after running handlers have been cancelled and have returned.
func Run(ctx context.Context, conn grpc.ClientConnInterface, opts Options, h Handler) error {
	return newWorker(opts, h).run(ctx, jobqueuev1.NewWorkerServiceClient(conn))
}

func newWorker(opts Options, h Handler) *Worker {
	w := &Worker{opts: opts, handler: h, log: opts.Logger, running: map[string]*runningJob{},
		wake: make(chan struct{}, 1), extendWake: make(chan struct{}, 1)}
	if w.log == nil {
		w.log = slog.Default()
	}
	return w
}

func (w *Worker) run(ctx context.Context, client jobqueuev1.WorkerServiceClient) error {
	// The stream outlives ctx on purpose: after ctx ends, running jobs still report outcomes.
	streamCtx, cancelStream := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelStream()
	stream, err := client.Lease(streamCtx)
	if err != nil {
		return err
	}
	w.stream = stream
	if err := w.send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Open{Open: &jobqueuev1.LeaseOpen{
		WorkerId: w.opts.WorkerID, Queues: w.opts.Queues, Kinds: w.opts.Kinds, MaxInFlight: w.opts.MaxInFlight,
	}}}); err != nil {
		return err
	}

	stop := make(chan struct{})
	var loops sync.WaitGroup
	loops.Add(2)
	go func() { defer loops.Done(); w.sendLoop(stop) }()
	go func() { defer loops.Done(); w.extendLoop(stop) }()
	go func() {
		select {
		case <-ctx.Done():
			w.startDrain(true)
		case <-streamCtx.Done():
		}
	}()

	for {
		resp, err := stream.Recv()
		if err != nil {
			w.cancelAll()
			w.wg.Wait()
			cancelStream()
			close(stop)
			loops.Wait()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch m := resp.Msg.(type) {
		case *jobqueuev1.LeaseResponse_Jobs:
			for _, lj := range m.Jobs.Jobs {
				w.start(lj)
			}
		case *jobqueuev1.LeaseResponse_Cancel:
			w.mu.Lock()
			r := w.running[m.Cancel.JobId]
			w.mu.Unlock()
			if r != nil {
				r.cancel(ErrCancelRequested)
			}
		case *jobqueuev1.LeaseResponse_Rejected:
			w.log.Warn("jobqueue: outcome rejected", "job_id", m.Rejected.JobId,
				"code", m.Rejected.Code.String(), "reason", m.Rejected.Reason)
		case *jobqueuev1.LeaseResponse_Draining:
			w.log.Info("jobqueue: server draining; finishing running jobs")
			w.startDrain(false)
		case *jobqueuev1.LeaseResponse_Heartbeat:
			w.drainAcked()
		case *jobqueuev1.LeaseResponse_Extended:
		}
	}
}

func (w *Worker) start(lj *jobqueuev1.LeasedJob) {
	job := &Job{Job: lj.Job, LeaseToken: lj.LeaseToken, w: w}
	ctx, cancel := context.WithCancelCause(context.Background())
	every := w.opts.ExtendEvery
	if every <= 0 {
		every = 15 * time.Second
		if d := job.GetLeaseDuration().AsDuration(); d > 0 {
			every = d / 2
		}
	}
	r := &runningJob{job: job, cancel: cancel, every: every, next: time.Now().Add(every)}
	w.mu.Lock()
	w.running[job.Id] = r
	if w.extendAt.IsZero() || r.next.Before(w.extendAt) {
		w.extendAt = r.next
		select {
		case w.extendWake <- struct{}{}:
		default:
		}
	}
	w.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		result, err := w.handler(ctx, job)
		w.report(ctx, r, result, err)
	}()
}

// extendLoop extends the leases of running jobs when they are due, all due at once in one
// LeaseExtend, with one timer for the whole worker (set for the soonest due job).
func (w *Worker) extendLoop(stop <-chan struct{}) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		w.mu.Lock()
		now := time.Now()
		var due []*jobqueuev1.ExtendedJob
		var next time.Time
		for _, r := range w.running {
			if !now.Before(r.next.Add(-r.every / 4)) {
				due = append(due, &jobqueuev1.ExtendedJob{JobId: r.job.Id, LeaseToken: r.job.LeaseToken})
				r.next = now.Add(r.every)
			}
			if next.IsZero() || r.next.Before(next) {
				next = r.next
			}
		}
		if len(due) > 0 {
			w.extends = append(w.extends, due...)
			w.wakeSenderLocked()
		}
		w.extendAt = next
		w.mu.Unlock()

		var fire <-chan time.Time
		if !next.IsZero() {
			t.Reset(next.Sub(now))
			fire = t.C
		}
		select {
		case <-stop:
			t.Stop()
			return
		case <-w.extendWake:
		case <-fire:
		}
	}
}

// report queues the job's outcome for the sender. The job leaves `running` in the same step, so
// the sender never sees the worker idle before this outcome is in its batch.
func (w *Worker) report(ctx context.Context, r *runningJob, result *structpb.Struct, err error) {
	job := r.job
	var (
		completed *jobqueuev1.CompletedJob
		failed    *jobqueuev1.FailedJob
		cancelled *jobqueuev1.CancelledJob
	)
	switch {
	case err == nil:
		completed = &jobqueuev1.CompletedJob{JobId: job.Id, LeaseToken: job.LeaseToken, Result: result}
	case errors.Is(context.Cause(ctx), ErrCancelRequested):
		cancelled = &jobqueuev1.CancelledJob{JobId: job.Id, LeaseToken: job.LeaseToken}
	default:
		failed = &jobqueuev1.FailedJob{
			JobId: job.Id, LeaseToken: job.LeaseToken,
			Error:        &jobqueuev1.JobError{Message: err.Error()},
			FailureClass: jobqueuev1.FailureClass_FAILURE_CLASS_RETRY,
		}
		var c *classified
		if errors.As(err, &c) {
			failed.FailureClass = c.class
			if c.after > 0 {
				failed.RetryAfter = durationpb.New(c.after)
			}
		}
	}
	r.cancel(nil)
	w.mu.Lock()
	if w.running[job.Id] == r {
		delete(w.running, job.Id)
	}
	switch {
	case completed != nil:
		w.completes = append(w.completes, completed)
	case cancelled != nil:
		w.cancelled = append(w.cancelled, cancelled)
	default:
		w.fails = append(w.fails, failed)
	}
	w.wakeSenderLocked()
	w.mu.Unlock()
}

func (w *Worker) wakeSenderLocked() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// sendLoop is the group commit: each round takes everything queued so far and sends it, one
// message per kind; what is queued while a round's sends are under way goes in the next round.
// Once the worker is draining and nothing runs, the round that took the last outcomes also
// half-closes the stream, after sending them.
func (w *Worker) sendLoop(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-w.wake:
		}
		// The goroutine that woke us made us the next to run on its P, ahead of handlers that
		// are runnable and about to finish: without this yield each would wake us in turn and
		// go alone. With nothing else runnable it returns at once.
		runtime.Gosched()
		w.mu.Lock()
		extends, completes, fails, cancelled := w.extends, w.completes, w.fails, w.cancelled
		w.extends, w.completes, w.fails, w.cancelled = nil, nil, nil, nil
		idle := w.idleLocked()
		w.mu.Unlock()

		if len(extends) > 0 {
			_ = w.send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Extend{Extend: &jobqueuev1.LeaseExtend{
				Jobs: extends,
			}}})
		}
		if len(completes) > 0 {
			w.sendOutcomes(len(completes), &jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Complete{
				Complete: &jobqueuev1.LeaseComplete{Jobs: completes},
			}})
		}
		if len(fails) > 0 {
			w.sendOutcomes(len(fails), &jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Fail{
				Fail: &jobqueuev1.LeaseFail{Jobs: fails},
			}})
		}
		if len(cancelled) > 0 {
			w.sendOutcomes(len(cancelled), &jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Cancelled{
				Cancelled: &jobqueuev1.LeaseCancelled{Jobs: cancelled},
			}})
		}
		if idle {
			w.closeSend()
		}
	}
}

func (w *Worker) sendOutcomes(n int, m *jobqueuev1.LeaseRequest) {
	if err := w.send(m); err != nil {
		w.log.Warn("jobqueue: could not report outcomes", "jobs", n, "err", err)
	}
}

// startDrain stops taking jobs; tellServer sends `drain` so the server stops pushing them, and a
// heartbeat after it: the server answers that only once it has handled `drain`, and the stream
// is ordered, so with the answer in every job meant for this worker has arrived.
func (w *Worker) startDrain(tellServer bool) {
	w.mu.Lock()
	if w.draining {
		w.mu.Unlock()
		return
	}
	w.draining = true
	w.awaitingAck = tellServer
	w.wakeSenderLocked()
	w.mu.Unlock()
	if !tellServer {
		return
	}
	err := w.send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Drain{Drain: &jobqueuev1.LeaseDrain{}}})
	if err == nil {
		err = w.send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Heartbeat{Heartbeat: &jobqueuev1.Heartbeat{}}})
	}
	if err != nil {
		w.drainAcked()
		return
	}
	time.AfterFunc(drainAckWait, w.drainAcked)
}

// drainAcked: the heartbeat after `drain` was answered (or will not be, or took too long).
func (w *Worker) drainAcked() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.awaitingAck {
		w.awaitingAck = false
		w.wakeSenderLocked()
	}
}

func (w *Worker) idleLocked() bool {
	return w.draining && !w.awaitingAck && len(w.running) == 0
}

func (w *Worker) cancelAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.running {
		r.cancel(errors.New("jobqueue: lease stream ended"))
	}
}

func (w *Worker) send(m *jobqueuev1.LeaseRequest) error {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	if w.closed {
		return fmt.Errorf("jobqueue: stream already closed for sending")
	}
	return w.stream.Send(m)
}

func (w *Worker) closeSend() {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	if !w.closed {
		w.closed = true
		_ = w.stream.CloseSend()
	}
}
