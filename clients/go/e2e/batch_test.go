package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
	"github.com/jobqueue-grpc/jobqueue-grpc/clients/go/worker"
)

// countingConn counts the LeaseComplete messages sent on its streams, and the jobs in them.
type countingConn struct {
	grpc.ClientConnInterface
	messages, jobs atomic.Int64
}

func (c *countingConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string,
	opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := c.ClientConnInterface.NewStream(ctx, desc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &countingStream{ClientStream: s, c: c}, nil
}

type countingStream struct {
	grpc.ClientStream
	c *countingConn
}

func (s *countingStream) SendMsg(m any) error {
	if req, ok := m.(*jobqueuev1.LeaseRequest); ok && req.GetComplete() != nil {
		s.c.messages.Add(1)
		s.c.jobs.Add(int64(len(req.GetComplete().Jobs)))
	}
	return s.ClientStream.SendMsg(m)
}

// TestWorkerBatchesOutcomes: jobs that finish together are reported in fewer LeaseComplete
// messages than jobs, and the server settles every one of them.
func TestWorkerBatchesOutcomes(t *testing.T) {
	const n = 200
	conn := dial(t)
	ctx := ctxFor(t)
	jobs := jobqueuev1.NewJobServiceClient(conn)
	q := queueName(t)

	batch := &jobqueuev1.EnqueueBatchRequest{}
	for range n {
		batch.Jobs = append(batch.Jobs, &jobqueuev1.EnqueueRequest{Queue: q, Kind: "batched", MaxAttempts: 1})
	}
	enq, err := jobs.EnqueueBatch(ctx, batch)
	if err != nil {
		t.Fatalf("EnqueueBatch: %v", err)
	}

	// Every handler waits until all n have started, then they all return at once.
	var started atomic.Int32
	allStarted := make(chan struct{})
	var once sync.Once
	handler := func(ctx context.Context, job *worker.Job) (*structpb.Struct, error) {
		if started.Add(1) == n {
			once.Do(func() { close(allStarted) })
		}
		select {
		case <-allStarted:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return nil, nil
	}
	counting := &countingConn{ClientConnInterface: conn}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- worker.Run(runCtx, counting, worker.Options{
			WorkerID: "go-batch-test", Queues: []string{q}, MaxInFlight: n,
		}, handler)
	}()

	for _, r := range enq.Results {
		waitForState(t, ctx, jobs, r.Job.Id, jobqueuev1.JobState_JOB_STATE_SUCCEEDED)
	}
	stop()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run after drain: %v", err)
		}
	case <-time.After(deadline):
		t.Fatal("Run did not return after its context ended")
	}
	msgs, reported := counting.messages.Load(), counting.jobs.Load()
	t.Logf("%d completions in %d LeaseComplete messages", reported, msgs)
	if reported != n {
		t.Fatalf("%d completions reported, want %d", reported, n)
	}
	if msgs > n/2 {
		t.Fatalf("%d jobs finished at once took %d LeaseComplete messages, want at most %d", n, msgs, n/2)
	}
}
