// Goworker is the benchmark's Go worker (bench/run.py --workers go builds and runs it): -streams
// worker.Run loops, each on its own connection, with -max-in-flight jobs each, a no-op handler for
// every kind. It reports the way bench/workers.py does, so run.py waits for it and stops it the
// same way:
//
//	BENCH_PROGRESS  a file rewritten every 20 ms with "done last_done_unix_time"
//	BENCH_OUT       a file that gets {"done": n, "complete_messages": m} at exit, m being the
//	                LeaseComplete messages sent (so done/m is the mean batch)
//	BENCH_READY     a file created once every stream has sent its LeaseOpen (bench/peers/run.py
//	                waits for it, as for its Python workers': with `serve --processes N` the
//	                streams are spread over processes whose open-stream gauges it cannot all read)
//
// SIGTERM or SIGINT drains: running jobs finish and are reported, then it exits 0. A stream that
// fails makes it exit 1 (run.py then stops waiting). GOMAXPROCS defaults to 1 here: a no-op
// worker needs little CPU, and an idle second P spins looking for work, burning CPU the server
// could use on a small machine.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	jobqueuev1 "github.com/jobqueue-grpc/jobqueue-grpc/clients/go/jobqueuev1"
	"github.com/jobqueue-grpc/jobqueue-grpc/clients/go/worker"
)

var (
	done             atomic.Int64
	lastDone         atomic.Int64 // unix nanoseconds of the latest job run
	completeMessages atomic.Int64
)

// countingConn counts the LeaseComplete messages sent on its streams and calls opened after
// each LeaseOpen sent.
type countingConn struct {
	grpc.ClientConnInterface
	opened func()
}

func (c countingConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string,
	opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := c.ClientConnInterface.NewStream(ctx, desc, method, opts...)
	return countingStream{s, c.opened}, err
}

type countingStream struct {
	grpc.ClientStream
	opened func()
}

func (s countingStream) SendMsg(m any) error {
	req, _ := m.(*jobqueuev1.LeaseRequest)
	if req.GetComplete() != nil {
		completeMessages.Add(1)
	}
	err := s.ClientStream.SendMsg(m)
	if err == nil && req.GetOpen() != nil {
		s.opened()
	}
	return err
}

func main() {
	addr := flag.String("addr", envOr("JOBQUEUE_ADDRESS", "127.0.0.1:50051"), "server host:port")
	queue := flag.String("queue", envOr("BENCH_QUEUE", "bench"), "queue to work")
	streams := flag.Int("streams", 1, "worker.Run loops (Lease streams), each on its own connection")
	maxInFlight := flag.Int("max-in-flight", atoiOr(os.Getenv("BENCH_CONCURRENCY"), 100),
		"MaxInFlight of each stream")
	flag.Parse()
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if path := os.Getenv("BENCH_PROGRESS"); path != "" {
		go func() {
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				writeProgress(path)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}

	handler := func(context.Context, *worker.Job) (*structpb.Struct, error) {
		lastDone.Store(time.Now().UnixNano()) // before done: a progress line's time is never older
		done.Add(1)
		return nil, nil
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	failed := make(chan error, *streams)
	var wg, opened sync.WaitGroup
	opened.Add(*streams) // each stream's first LeaseOpen
	if path := os.Getenv("BENCH_READY"); path != "" {
		go func() {
			opened.Wait()
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				fail(err)
			}
		}()
	}
	for i := range *streams {
		conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			fail(err)
		}
		defer conn.Close()
		opts := worker.Options{
			WorkerID: fmt.Sprintf("bench-go-%d-%d", os.Getpid(), i), Queues: []string{*queue},
			MaxInFlight: int32(*maxInFlight), Logger: log,
		}
		var once sync.Once
		cc := countingConn{conn, func() { once.Do(opened.Done) }}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Run returns nil after a drain; the server's own drain ends this stream, not ours:
			// reconnect until our context ends.
			for ctx.Err() == nil {
				if err := worker.Run(ctx, cc, opts, handler); err != nil {
					failed <- err
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	go func() {
		wg.Wait()
		close(failed)
	}()
	if err := <-failed; err != nil {
		fail(err)
	}

	if path := os.Getenv("BENCH_PROGRESS"); path != "" {
		writeProgress(path)
	}
	if path := os.Getenv("BENCH_OUT"); path != "" {
		b, _ := json.Marshal(map[string]int64{"done": done.Load(), "complete_messages": completeMessages.Load()})
		if err := os.WriteFile(path, b, 0o644); err != nil {
			fail(err)
		}
	}
}

func writeProgress(path string) {
	text := fmt.Sprintf("%d %.6f", done.Load(), float64(lastDone.Load())/1e9)
	if err := os.WriteFile(path+".tmp", []byte(text), 0o644); err != nil {
		fail(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		fail(err)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func atoiOr(s string, def int) int {
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		fail(err)
	}
	return n
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "goworker:", err)
	os.Exit(1)
}
