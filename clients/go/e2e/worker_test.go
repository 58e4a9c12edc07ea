package e2e

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
	"github.com/jobqueue-grpc/jobqueue-grpc/clients/go/worker"
)

// TestWorkerHelper runs worker.Run against the server: it completes jobs, retries a flaky one,
// dead-letters a permanent failure, keeps a slow job's lease extended, and stops a job whose
// cancel was requested while it ran.
func TestWorkerHelper(t *testing.T) {
	conn := dial(t)
	ctx := ctxFor(t)
	jobs := jobqueuev1.NewJobServiceClient(conn)
	q := queueName(t)

	enqueue := func(kind string, maxAttempts int32) string {
		t.Helper()
		resp, err := jobs.Enqueue(ctx, &jobqueuev1.EnqueueRequest{
			Queue: q, Kind: kind, MaxAttempts: maxAttempts,
			Payload:       mustStruct(t, map[string]any{"kind": kind}),
			LeaseDuration: durationpb.New(2 * time.Second),
		})
		if err != nil {
			t.Fatalf("Enqueue %s: %v", kind, err)
		}
		return resp.Job.Id
	}
	okID := enqueue("ok", 3)
	flakyID := enqueue("flaky", 3)
	fatalID := enqueue("fatal", 3)
	slowID := enqueue("slow", 1)
	cancelID := enqueue("cancel_me", 1)

	var flakyRuns atomic.Int32
	cancelStarted := make(chan struct{})
	handler := func(ctx context.Context, job *worker.Job) (*structpb.Struct, error) {
		switch job.Kind {
		case "ok":
			return structpb.NewStruct(map[string]any{"attempt": float64(job.Attempt)})
		case "flaky":
			if flakyRuns.Add(1) == 1 {
				return nil, worker.RetryAfter(errors.New("transient"), 10*time.Millisecond)
			}
			return nil, nil
		case "fatal":
			return nil, worker.Permanent(errors.New("bad payload"))
		case "slow":
			// Runs until the helper has extended the lease at least once, as seen by the server.
			first := job.LeaseExpiresAt.AsTime()
			end := time.Now().Add(deadline)
			for time.Now().Before(end) {
				got, err := jobs.GetJob(ctx, &jobqueuev1.GetJobRequest{Id: job.Id})
				if err != nil {
					return nil, err
				}
				if got.Job.LeaseExpiresAt.AsTime().After(first) {
					return structpb.NewStruct(map[string]any{"extended": true})
				}
				time.Sleep(20 * time.Millisecond) // poll interval
			}
			return nil, worker.Permanent(errors.New("lease was never extended"))
		case "cancel_me":
			close(cancelStarted)
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return nil, worker.Permanent(errors.New("unknown kind " + job.Kind))
	}

	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- worker.Run(runCtx, conn, worker.Options{
			WorkerID: "go-helper-test", Queues: []string{q}, MaxInFlight: 10,
			ExtendEvery: 100 * time.Millisecond,
		}, handler)
	}()

	select {
	case <-cancelStarted:
	case <-time.After(deadline):
		t.Fatal("cancel_me never started")
	}
	c, err := jobs.CancelJob(ctx, &jobqueuev1.CancelJobRequest{Id: cancelID})
	if err != nil {
		t.Fatalf("CancelJob: %v", err)
	}
	if c.Outcome != jobqueuev1.CancelOutcome_CANCEL_OUTCOME_CANCEL_REQUESTED {
		t.Fatalf("cancel a running job: outcome %s, want CANCEL_REQUESTED", c.Outcome)
	}

	ok := waitForState(t, ctx, jobs, okID, jobqueuev1.JobState_JOB_STATE_SUCCEEDED)
	if ok.Result.Fields["attempt"].GetNumberValue() != 1 {
		t.Fatalf("ok result = %v", ok.Result)
	}
	flaky := waitForState(t, ctx, jobs, flakyID, jobqueuev1.JobState_JOB_STATE_SUCCEEDED)
	if flaky.Attempt != 2 || len(flaky.Errors) != 1 || flaky.Errors[0].Message != "transient" {
		t.Fatalf("flaky: attempt %d errors %v, want success on attempt 2 after one error", flaky.Attempt, flaky.Errors)
	}
	fatal := waitForState(t, ctx, jobs, fatalID, jobqueuev1.JobState_JOB_STATE_FAILED)
	if fatal.Attempt != 1 || fatal.LastError.GetMessage() != "bad payload" {
		t.Fatalf("fatal: attempt %d last_error %v, want dead-lettered on attempt 1", fatal.Attempt, fatal.LastError)
	}
	slow := waitForState(t, ctx, jobs, slowID, jobqueuev1.JobState_JOB_STATE_SUCCEEDED)
	if !slow.Result.Fields["extended"].GetBoolValue() {
		t.Fatalf("slow result = %v", slow.Result)
	}
	waitForState(t, ctx, jobs, cancelID, jobqueuev1.JobState_JOB_STATE_CANCELLED)

	stop()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run after drain: %v", err)
		}
	case <-time.After(deadline):
		t.Fatal("Run did not return after its context ended")
	}
}
