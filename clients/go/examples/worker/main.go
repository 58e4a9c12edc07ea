// Worker works jobs from the Lease stream until Ctrl-C: go run ./examples/worker -addr 127.0.0.1:50051
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/jobqueue-grpc/jobqueue-grpc/clients/go/worker"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "jobqueue-grpc server")
	queue := flag.String("queue", "default", "queue to work")
	flag.Parse()

	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	// SIGINT/SIGTERM: stop taking jobs, finish and report the running ones, then exit.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	err = worker.Run(ctx, conn, worker.Options{WorkerID: "go-example", Queues: []string{*queue}, MaxInFlight: 8},
		func(ctx context.Context, job *worker.Job) (*structpb.Struct, error) {
			to := job.Payload.GetFields()["to"].GetStringValue()
			if to == "" {
				return nil, worker.Permanent(errors.New("payload has no 'to'")) // straight to the DLQ
			}
			// The producer's W3C trace context and labels come with every lease. With OpenTelemetry
			// (go.opentelemetry.io/otel), run the work in a child of the producer's span:
			//   parent := propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{
			//       "traceparent": job.Traceparent, "tracestate": job.Tracestate})
			//   ctx, span := tracer.Start(parent, "process "+job.Kind, trace.WithSpanKind(trace.SpanKindConsumer))
			//   defer span.End()
			if job.Traceparent != "" {
				log.Printf("job %s continues trace %s (metadata %v)", job.Id, job.Traceparent, job.Metadata)
			}
			log.Printf("job %s (%s, attempt %d): sending to %s", job.Id, job.Kind, job.Attempt, to)
			return structpb.NewStruct(map[string]any{"delivered_to": to})
		})
	if err != nil {
		log.Fatal(err)
	}
}
