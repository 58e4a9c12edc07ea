// Package jobs has helpers over JobService: Wait blocks until a job is terminal, on the
// server's WatchJob stream (pushed changes, no polling).
package jobs

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
)

// Terminal reports whether a job in state s will change no more.
func Terminal(s jobqueuev1.JobState) bool {
	switch s {
	case jobqueuev1.JobState_JOB_STATE_SUCCEEDED, jobqueuev1.JobState_JOB_STATE_FAILED,
		jobqueuev1.JobState_JOB_STATE_CANCELLED:
		return true
	}
	return false
}

// Watch calls fn with the job now and again on every change (state, attempt, progress, result)
// until it is terminal, and returns that last job. A stream that ends UNAVAILABLE (a server
// draining) is opened again; ctx bounds the whole wait.
func Watch(
	ctx context.Context, c jobqueuev1.JobServiceClient, id string, fn func(*jobqueuev1.Job),
	opts ...grpc.CallOption,
) (*jobqueuev1.Job, error) {
	for {
		stream, err := c.WatchJob(ctx, &jobqueuev1.WatchJobRequest{Id: id}, opts...)
		if err != nil {
			return nil, err
		}
		var last *jobqueuev1.Job
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				if last != nil && Terminal(last.State) {
					return last, nil
				}
				break // ended early: watch again
			}
			if status.Code(err) == codes.Unavailable {
				break
			}
			if err != nil {
				return nil, err
			}
			last = resp.GetJob()
			if fn != nil {
				fn(last)
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond): // then try again, maybe on another replica
		}
	}
}

// Wait returns the job once it is SUCCEEDED, FAILED or CANCELLED (see Watch).
func Wait(
	ctx context.Context, c jobqueuev1.JobServiceClient, id string, opts ...grpc.CallOption,
) (*jobqueuev1.Job, error) {
	return Watch(ctx, c, id, nil, opts...)
}
