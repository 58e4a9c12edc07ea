// Schedule creates (or replaces) a periodic job and runs it once now:
// go run ./examples/schedule -addr 127.0.0.1:50051
// "nightly-report" runs at 03:00 in Berlin, never two unfinished at once (unique), and the
// missed ticks of a long outage run once.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "jobqueue-grpc server")
	flag.Parse()

	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	schedules := jobqueuev1.NewScheduleServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	payload, _ := structpb.NewStruct(map[string]any{"full": true})
	s := &jobqueuev1.Schedule{
		Id:               "nightly-report",
		Cron:             "0 3 * * *",
		Timezone:         "Europe/Berlin",
		MissedTickPolicy: jobqueuev1.MissedTickPolicy_MISSED_TICK_POLICY_RUN_ONCE,
		Job: &jobqueuev1.EnqueueRequest{
			Queue: "reports", Kind: "nightly_report", Payload: payload,
			Unique: &jobqueuev1.UniqueOptions{Key: "nightly-report"},
		},
	}
	_, err = schedules.CreateSchedule(ctx, &jobqueuev1.CreateScheduleRequest{Schedule: s})
	if status.Code(err) == codes.AlreadyExists {
		_, err = schedules.UpdateSchedule(ctx, &jobqueuev1.UpdateScheduleRequest{Schedule: s})
	}
	if err != nil {
		log.Fatal(err)
	}
	got, err := schedules.GetSchedule(ctx, &jobqueuev1.GetScheduleRequest{Id: s.Id})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s next run %s\n", got.Schedule.Id, got.Schedule.NextRunAt.AsTime().Format(time.RFC3339))
	run, err := schedules.TriggerSchedule(ctx, &jobqueuev1.TriggerScheduleRequest{Id: s.Id})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("triggered %s created=%v\n", run.Job.Id, run.Created)
}
