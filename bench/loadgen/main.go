// Loadgen is the benchmark's load generator (bench/run.py builds and runs it): a compiled client
// costs the 2-core benchmark machine far less CPU per RPC than a Python one, so the figures
// measure the server rather than the client. Modes mirror the Python generators in bench/run.py:
//
//	loadgen unary  ADDRESS N CONCURRENCY QUEUE    N Enqueue RPCs (kind "noop"), CONCURRENCY at a time
//	loadgen batch  ADDRESS N CONCURRENCY QUEUE    N/1000 EnqueueBatch RPCs of 1,000 "noop" jobs
//	loadgen steady ADDRESS RATE SECONDS QUEUE     Enqueue (kind "latency") at RATE per second for
//	                                              SECONDS, open loop: each call in its own goroutine
//	loadgen stamped ADDRESS RATE SECONDS QUEUE    as steady, with the payload {"t": the wall-clock
//	                                              time of the send, epoch seconds}, for handlers
//	                                              that time enqueue -> start themselves
//	                                              (bench/peers/run.py)
//
// It exits non-zero, printing the error, on the first RPC that fails.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
)

const (
	batchSize = 1000
)

// conns is how many HTTP/2 connections each process opens (LOADGEN_CONNS, default 2), so one
// connection's framing is not the limit; and with `serve --processes N`, where the kernel
// spreads connections (not calls) over the server processes, enough of them to spread evenly.
var conns = envInt("LOADGEN_CONNS", 2)

func envInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		return atoi(v)
	}
	return def
}

func main() {
	if len(os.Args) != 6 {
		fail(fmt.Errorf("usage: loadgen unary|batch|steady|stamped ADDRESS N|RATE CONCURRENCY|SECONDS QUEUE"))
	}
	if os.Getenv("GOMAXPROCS") == "" {
		// One P is plenty for a few thousand RPCs a second, and an idle second P spins
		// looking for work, burning the CPU this program exists to leave to the server.
		runtime.GOMAXPROCS(1)
	}
	mode, address, queue := os.Args[1], os.Args[2], os.Args[5]
	clients, closeAll := dial(address)
	defer closeAll()
	var err error
	switch mode {
	case "unary":
		err = unary(clients, atoi(os.Args[3]), atoi(os.Args[4]), queue)
	case "batch":
		err = batch(clients, atoi(os.Args[3]), atoi(os.Args[4]), queue)
	case "steady":
		err = steady(clients[0], atof(os.Args[3]), atof(os.Args[4]), queue, false)
	case "stamped":
		err = steady(clients[0], atof(os.Args[3]), atof(os.Args[4]), queue, true)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fail(err)
	}
}

func dial(address string) ([]jobqueuev1.JobServiceClient, func()) {
	var out []jobqueuev1.JobServiceClient
	var cs []*grpc.ClientConn
	for range conns {
		c, err := grpc.NewClient(address,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			fail(err)
		}
		cs = append(cs, c)
		out = append(out, jobqueuev1.NewJobServiceClient(c))
	}
	return out, func() {
		for _, c := range cs {
			c.Close()
		}
	}
}

// closed runs `workers` goroutines that share `calls` calls of `call`; the first error wins.
func closed(clients []jobqueuev1.JobServiceClient, calls, workers int,
	call func(context.Context, jobqueuev1.JobServiceClient) error) error {
	left := int64(calls)
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	ctx := context.Background()
	for w := range workers {
		client := clients[w%len(clients)]
		wg.Go(func() {
			for atomic.AddInt64(&left, -1) >= 0 {
				if err := call(ctx, client); err != nil {
					once.Do(func() { first = err })
					atomic.StoreInt64(&left, 0)
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

func unary(clients []jobqueuev1.JobServiceClient, n, concurrency int, queue string) error {
	req := &jobqueuev1.EnqueueRequest{Queue: queue, Kind: "noop"}
	return closed(clients, n, concurrency, func(ctx context.Context, c jobqueuev1.JobServiceClient) error {
		_, err := c.Enqueue(ctx, req)
		return wrap("Enqueue", err)
	})
}

func batch(clients []jobqueuev1.JobServiceClient, n, concurrency int, queue string) error {
	req := &jobqueuev1.EnqueueBatchRequest{Jobs: make([]*jobqueuev1.EnqueueRequest, batchSize)}
	for i := range req.Jobs {
		req.Jobs[i] = &jobqueuev1.EnqueueRequest{Queue: queue, Kind: "noop"}
	}
	return closed(clients, n/batchSize, concurrency, func(ctx context.Context, c jobqueuev1.JobServiceClient) error {
		resp, err := c.EnqueueBatch(ctx, req)
		if err == nil && len(resp.Results) != batchSize {
			err = fmt.Errorf("%d results for %d jobs", len(resp.Results), batchSize)
		}
		return wrap("EnqueueBatch", err)
	})
}

func steady(client jobqueuev1.JobServiceClient, rate, seconds float64, queue string, stamp bool) error {
	ctx := context.Background()
	total := int(rate * seconds)
	errs := make(chan error, total)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		time.Sleep(time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))))
		wg.Go(func() {
			req := &jobqueuev1.EnqueueRequest{Queue: queue, Kind: "latency"}
			if stamp {
				now := float64(time.Now().UnixNano()) / 1e9
				req.Payload = &structpb.Struct{Fields: map[string]*structpb.Value{"t": structpb.NewNumberValue(now)}}
			}
			_, err := client.Enqueue(ctx, req)
			if err != nil {
				errs <- wrap("Enqueue", err)
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when the channel is empty
}

func wrap(rpc string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", rpc, err)
	}
	return nil
}

func atoi(s string) int {
	v, err := strconv.Atoi(s)
	if err != nil {
		fail(err)
	}
	return v
}

func atof(s string) float64 {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		fail(err)
	}
	return v
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(1)
}
