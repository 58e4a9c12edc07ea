// Producer enqueues jobs: go run ./examples/producer -addr 127.0.0.1:50051 -n 3
//
// Each run uses fresh idempotency keys (go-producer-<run>-<i>); pass the same -run again to
// see the idempotency keys at work: the same jobs come back, created=false.
// With -wait it then waits for each to finish (jobs.Wait: the server pushes, nothing polls).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
	jobqueuejobs "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobs"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "jobqueue-grpc server")
	queue := flag.String("queue", "default", "queue to enqueue into")
	n := flag.Int("n", 3, "how many jobs")
	run := flag.String("run", strconv.FormatInt(time.Now().UnixNano(), 36),
		"idempotency key prefix (unique per run by default; repeat one to get the same jobs back)")
	wait := flag.Bool("wait", false, "wait for every job to end (run a worker too)")
	flag.Parse()

	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	jobs := jobqueuev1.NewJobServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ids []string

	for i := range *n {
		payload, _ := structpb.NewStruct(map[string]any{"to": fmt.Sprintf("user%d@example.com", i)})
		resp, err := jobs.Enqueue(ctx, &jobqueuev1.EnqueueRequest{
			Queue: *queue, Kind: "send_email", Payload: payload,
			IdempotencyKey: fmt.Sprintf("go-producer-%s-%d", *run, i), // same key twice: one job
		})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s %s created=%v\n", resp.Job.Id, resp.Job.State, resp.Created)
		ids = append(ids, resp.Job.Id)
	}
	if *wait {
		waitCtx, stop := context.WithTimeout(context.Background(), 5*time.Minute)
		defer stop()
		for _, id := range ids {
			job, err := jobqueuejobs.Wait(waitCtx, jobs, id)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("%s %s result=%v\n", job.Id, job.State, job.Result.AsMap())
		}
	}
}
