// Package worker runs the client side of WorkerService.Lease: one bidirectional stream, jobs
// pushed by the server, each handled in its own goroutine, its outcome reported on the stream.
//
// The generated stubs in package jobqueuev1 are all a worker needs; this package only saves
// every worker from re-writing the same loop: a single sender (gRPC streams allow one Send at a
// time), lease extension while a handler runs, cancel notices turned into context cancellation,
// and a graceful drain when the caller's context ends or the server shuts down.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	// elsewhere while it still runs here).
	ExtendEvery time.Duration
	Logger      *slog.Logger
}

// Worker is one Lease stream. Use Run unless you need the Worker value itself.
type Worker struct {
	opts    Options
	handler Handler
	log     *slog.Logger

	sendMu sync.Mutex
	stream grpc.BidiStreamingClient[jobqueuev1.LeaseRequest, jobqueuev1.LeaseResponse]
	closed bool

	mu       sync.Mutex
	running  map[string]context.CancelCauseFunc
	draining bool
	idle     chan struct{} // closed when draining and nothing is running
	wg       sync.WaitGroup
}

// Run opens a Lease stream on conn and works jobs until ctx ends or the server drains.
// Either way it stops taking jobs, lets running handlers finish and report, and returns nil
// once the server closes the stream; call it again to reconnect. Any other stream error is
// returned after running handlers have been cancelled and have returned.
func Run(ctx context.Context, conn grpc.ClientConnInterface, opts Options, h Handler) error {
	w := &Worker{opts: opts, handler: h, log: opts.Logger, running: map[string]context.CancelCauseFunc{},
		idle: make(chan struct{})}
	if w.log == nil {
		w.log = slog.Default()
	}
	return w.run(ctx, jobqueuev1.NewWorkerServiceClient(conn))
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

	go func() {
		select {
		case <-ctx.Done():
			w.startDrain(true)
		case <-streamCtx.Done():
		}
	}()
	go func() {
		<-w.idle
		w.closeSend()
	}()

	for {
		resp, err := stream.Recv()
		if err != nil {
			w.cancelAll()
			w.wg.Wait()
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
			cancel := w.running[m.Cancel.JobId]
			w.mu.Unlock()
			if cancel != nil {
				cancel(ErrCancelRequested)
			}
		case *jobqueuev1.LeaseResponse_Rejected:
			w.log.Warn("jobqueue: outcome rejected", "job_id", m.Rejected.JobId,
				"code", m.Rejected.Code.String(), "reason", m.Rejected.Reason)
		case *jobqueuev1.LeaseResponse_Draining:
			w.log.Info("jobqueue: server draining; finishing running jobs")
			w.startDrain(false)
		case *jobqueuev1.LeaseResponse_Extended, *jobqueuev1.LeaseResponse_Heartbeat:
		}
	}
}

func (w *Worker) start(lj *jobqueuev1.LeasedJob) {
	job := &Job{Job: lj.Job, LeaseToken: lj.LeaseToken, w: w}
	ctx, cancel := context.WithCancelCause(context.Background())
	w.mu.Lock()
	w.running[job.Id] = cancel
	w.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer w.finished(job.Id)
		stopExtending := w.keepExtended(ctx, job)
		result, err := w.handler(ctx, job)
		stopExtending()
		w.report(ctx, job, result, err)
	}()
}

func (w *Worker) keepExtended(ctx context.Context, job *Job) (stop func()) {
	every := w.opts.ExtendEvery
	if every <= 0 {
		every = 15 * time.Second
		if d := job.GetLeaseDuration().AsDuration(); d > 0 {
			every = d / 2
		}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				_ = w.send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Extend{Extend: &jobqueuev1.LeaseExtend{
					Jobs: []*jobqueuev1.ExtendedJob{{JobId: job.Id, LeaseToken: job.LeaseToken}},
				}}})
			}
		}
	}()
	return func() { close(done) }
}

func (w *Worker) report(ctx context.Context, job *Job, result *structpb.Struct, err error) {
	var msg *jobqueuev1.LeaseRequest
	switch {
	case err == nil:
		msg = &jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Complete{Complete: &jobqueuev1.LeaseComplete{
			Jobs: []*jobqueuev1.CompletedJob{{JobId: job.Id, LeaseToken: job.LeaseToken, Result: result}},
		}}}
	case errors.Is(context.Cause(ctx), ErrCancelRequested):
		msg = &jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Cancelled{Cancelled: &jobqueuev1.LeaseCancelled{
			Jobs: []*jobqueuev1.CancelledJob{{JobId: job.Id, LeaseToken: job.LeaseToken}},
		}}}
	default:
		failed := &jobqueuev1.FailedJob{
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
		msg = &jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Fail{Fail: &jobqueuev1.LeaseFail{
			Jobs: []*jobqueuev1.FailedJob{failed},
		}}}
	}
	if err := w.send(msg); err != nil {
		w.log.Warn("jobqueue: could not report outcome", "job_id", job.Id, "err", err)
	}
}

func (w *Worker) finished(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if cancel := w.running[id]; cancel != nil {
		cancel(nil)
	}
	delete(w.running, id)
	w.maybeIdleLocked()
}

// startDrain stops taking jobs; tellServer sends `drain` so the server stops pushing them.
func (w *Worker) startDrain(tellServer bool) {
	w.mu.Lock()
	already := w.draining
	w.draining = true
	w.maybeIdleLocked()
	w.mu.Unlock()
	if tellServer && !already {
		_ = w.send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Drain{Drain: &jobqueuev1.LeaseDrain{}}})
	}
}

func (w *Worker) maybeIdleLocked() {
	if w.draining && len(w.running) == 0 {
		select {
		case <-w.idle:
		default:
			close(w.idle)
		}
	}
}

func (w *Worker) cancelAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, cancel := range w.running {
		cancel(errors.New("jobqueue: lease stream ended"))
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
