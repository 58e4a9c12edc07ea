package e2e

import (
	"testing"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
	"github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobs"
)

// jobs.Wait returns once the job is terminal: here it is cancelled while the watch is open.
func TestWaitReturnsTheTerminalJob(t *testing.T) {
	conn := dial(t)
	ctx := ctxFor(t)
	c := jobqueuev1.NewJobServiceClient(conn)
	resp, err := c.Enqueue(ctx, &jobqueuev1.EnqueueRequest{Queue: queueName(t), Kind: "wait"})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan jobqueuev1.JobState, 8)
	done := make(chan *jobqueuev1.Job, 1)
	errs := make(chan error, 1)
	go func() {
		job, err := jobs.Watch(ctx, c, resp.Job.Id, func(j *jobqueuev1.Job) { seen <- j.State })
		if err != nil {
			errs <- err
			return
		}
		done <- job
	}()
	if s := <-seen; s != jobqueuev1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("first state %v, want QUEUED", s)
	}
	if _, err := c.CancelJob(ctx, &jobqueuev1.CancelJobRequest{Id: resp.Job.Id}); err != nil {
		t.Fatal(err)
	}
	select {
	case job := <-done:
		if job.State != jobqueuev1.JobState_JOB_STATE_CANCELLED {
			t.Fatalf("got %v, want CANCELLED", job.State)
		}
	case err := <-errs:
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal("Wait did not return")
	}
	again, err := jobs.Wait(ctx, c, resp.Job.Id) // terminal already: at once
	if err != nil || again.State != jobqueuev1.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("Wait on a terminal job: %v %v", again, err)
	}
}
