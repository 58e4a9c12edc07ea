// Package e2e runs the Go client against a live jobqueue-grpc server.
//
// The server's address comes from JOBQUEUE_ADDRESS (host:port); without it every test skips.
// tests/test_clients.py starts a server and runs `go test ./...` with the address set.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
)

const deadline = 20 * time.Second

func dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	addr := os.Getenv("JOBQUEUE_ADDRESS")
	if addr == "" {
		t.Skip("JOBQUEUE_ADDRESS is not set: these tests need a running jobqueue-grpc server " +
			"(tests/test_clients.py starts one and sets it)")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// queueName is unique per test, so tests sharing one server never see each other's jobs.
func queueName(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "go-" + hex.EncodeToString(b)
}

func ctxFor(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*deadline)
	t.Cleanup(cancel)
	return ctx
}

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitForState polls GetJob until the job is in state or the deadline passes.
func waitForState(t *testing.T, ctx context.Context, jobs jobqueuev1.JobServiceClient, id string,
	want jobqueuev1.JobState) *jobqueuev1.Job {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		resp, err := jobs.GetJob(ctx, &jobqueuev1.GetJobRequest{Id: id})
		if err != nil {
			t.Fatalf("GetJob %s: %v", id, err)
		}
		if resp.Job.State == want {
			return resp.Job
		}
		if time.Now().After(end) {
			t.Fatalf("job %s (%s) is %s, want %s", id, resp.Job.Kind, resp.Job.State, want)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not synchronisation
	}
}

func TestEnqueueGetCancel(t *testing.T) {
	conn := dial(t)
	ctx := ctxFor(t)
	jobs := jobqueuev1.NewJobServiceClient(conn)
	q := queueName(t)

	req := &jobqueuev1.EnqueueRequest{
		Queue: q, Kind: "send_email", Priority: 3, IdempotencyKey: q + "-once",
		Payload: mustStruct(t, map[string]any{"to": "ada@example.com"}),
	}
	first, err := jobs.Enqueue(ctx, req)
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	if !first.Created || first.Job.Id == "" || first.Job.State != jobqueuev1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("Enqueue = %v, want a created QUEUED job", first)
	}
	again, err := jobs.Enqueue(ctx, req)
	if err != nil {
		t.Fatalf("Enqueue again: %v", err)
	}
	if again.Created || again.Job.Id != first.Job.Id {
		t.Fatalf("same idempotency key: created=%v id=%s, want the existing job %s",
			again.Created, again.Job.Id, first.Job.Id)
	}

	got, err := jobs.GetJob(ctx, &jobqueuev1.GetJobRequest{Id: first.Job.Id})
	if err != nil {
		t.Fatalf("GetJob: %v", err)
	}
	if got.Job.Queue != q || got.Job.Kind != "send_email" || got.Job.Priority != 3 ||
		got.Job.Payload.Fields["to"].GetStringValue() != "ada@example.com" {
		t.Fatalf("GetJob = %v", got.Job)
	}

	cancelled, err := jobs.CancelJob(ctx, &jobqueuev1.CancelJobRequest{Id: first.Job.Id})
	if err != nil {
		t.Fatalf("CancelJob: %v", err)
	}
	if cancelled.Outcome != jobqueuev1.CancelOutcome_CANCEL_OUTCOME_CANCELLED ||
		cancelled.Job.State != jobqueuev1.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("CancelJob = %v, want CANCELLED", cancelled)
	}
	_, err = jobs.CancelJob(ctx, &jobqueuev1.CancelJobRequest{Id: first.Job.Id})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("cancel a cancelled job: %v, want FAILED_PRECONDITION", err)
	}
	_, err = jobs.GetJob(ctx, &jobqueuev1.GetJobRequest{Id: "00000000-0000-4000-8000-000000000000"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetJob unknown id: %v, want NOT_FOUND", err)
	}
	_, err = jobs.GetJob(ctx, &jobqueuev1.GetJobRequest{Id: "not-a-uuid"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("GetJob malformed id: %v, want INVALID_ARGUMENT", err)
	}

	list, err := jobs.ListJobs(ctx, &jobqueuev1.ListJobsRequest{Queue: q})
	if err != nil {
		t.Fatalf("ListJobs: %v", err)
	}
	if len(list.Jobs) != 1 || list.Jobs[0].Id != first.Job.Id {
		t.Fatalf("ListJobs(queue=%s) = %v, want the one job", q, list.Jobs)
	}
}

// TestLeaseProtocol speaks WorkerService.Lease with the bare generated stubs: open, receive
// jobs, extend one, complete one, fail one for good, and see a stale outcome rejected.
func TestLeaseProtocol(t *testing.T) {
	conn := dial(t)
	ctx := ctxFor(t)
	jobs := jobqueuev1.NewJobServiceClient(conn)
	q := queueName(t)

	ids := map[string]string{} // kind -> id
	for _, kind := range []string{"ok", "boom", "slow"} {
		resp, err := jobs.Enqueue(ctx, &jobqueuev1.EnqueueRequest{Queue: q, Kind: kind, MaxAttempts: 1})
		if err != nil {
			t.Fatalf("Enqueue %s: %v", kind, err)
		}
		ids[kind] = resp.Job.Id
	}

	stream, err := jobqueuev1.NewWorkerServiceClient(conn).Lease(ctx)
	if err != nil {
		t.Fatalf("Lease: %v", err)
	}
	send := func(m *jobqueuev1.LeaseRequest) {
		t.Helper()
		if err := stream.Send(m); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	// recv returns the next message that is not a heartbeat.
	recv := func() *jobqueuev1.LeaseResponse {
		t.Helper()
		for {
			m, err := stream.Recv()
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if m.GetHeartbeat() == nil {
				return m
			}
		}
	}
	send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Open{Open: &jobqueuev1.LeaseOpen{
		WorkerId: "go-protocol-test", Queues: []string{q}, MaxInFlight: 3,
	}}})

	leased := map[string]*jobqueuev1.LeasedJob{} // kind -> lease
	for len(leased) < 3 {
		m := recv()
		if m.GetJobs() == nil {
			t.Fatalf("waiting for jobs, got %v", m)
		}
		for _, lj := range m.GetJobs().Jobs {
			if lj.LeaseToken == "" || lj.LeaseExpiresAt == nil || lj.Job.State != jobqueuev1.JobState_JOB_STATE_RUNNING {
				t.Fatalf("leased job without token/expiry or not RUNNING: %v", lj)
			}
			leased[lj.Job.Kind] = lj
		}
	}

	slow := leased["slow"]
	send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Extend{Extend: &jobqueuev1.LeaseExtend{
		Jobs: []*jobqueuev1.ExtendedJob{{JobId: slow.Job.Id, LeaseToken: slow.LeaseToken, ExtendBy: durationpb.New(10 * time.Minute)}},
	}}})
	ext := recv().GetExtended()
	if ext == nil || ext.JobId != slow.Job.Id || !ext.LeaseExpiresAt.AsTime().After(slow.LeaseExpiresAt.AsTime()) {
		t.Fatalf("extend: got %v, want a later expiry than %v", ext, slow.LeaseExpiresAt.AsTime())
	}

	ok, boom := leased["ok"], leased["boom"]
	send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Complete{Complete: &jobqueuev1.LeaseComplete{
		Jobs: []*jobqueuev1.CompletedJob{
			{JobId: ok.Job.Id, LeaseToken: ok.LeaseToken, Result: mustStruct(t, map[string]any{"sent": true})},
			{JobId: slow.Job.Id, LeaseToken: slow.LeaseToken},
		},
	}}})
	send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Fail{Fail: &jobqueuev1.LeaseFail{
		Jobs: []*jobqueuev1.FailedJob{{
			JobId: boom.Job.Id, LeaseToken: boom.LeaseToken,
			Error:        &jobqueuev1.JobError{Message: "mailbox does not exist"},
			FailureClass: jobqueuev1.FailureClass_FAILURE_CLASS_DO_NOT_RETRY,
		}},
	}}})

	done := waitForState(t, ctx, jobs, ids["ok"], jobqueuev1.JobState_JOB_STATE_SUCCEEDED)
	if !done.Result.Fields["sent"].GetBoolValue() {
		t.Fatalf("result not stored: %v", done.Result)
	}
	waitForState(t, ctx, jobs, ids["slow"], jobqueuev1.JobState_JOB_STATE_SUCCEEDED)
	failed := waitForState(t, ctx, jobs, ids["boom"], jobqueuev1.JobState_JOB_STATE_FAILED)
	if failed.LastError.GetMessage() != "mailbox does not exist" {
		t.Fatalf("last_error = %v", failed.LastError)
	}

	// The lease on "ok" ended with its outcome: the same token again changes nothing.
	send(&jobqueuev1.LeaseRequest{Msg: &jobqueuev1.LeaseRequest_Complete{Complete: &jobqueuev1.LeaseComplete{
		Jobs: []*jobqueuev1.CompletedJob{{JobId: ok.Job.Id, LeaseToken: ok.LeaseToken}},
	}}})
	rej := recv().GetRejected()
	if rej == nil || rej.JobId != ok.Job.Id {
		t.Fatalf("stale outcome: got %v, want rejected for %s", rej, ok.Job.Id)
	}

	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
}
