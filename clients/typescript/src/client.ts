// Clients for every service over one HTTP/2 connection, speaking the gRPC protocol.
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobService } from "./gen/jobqueue/v1/job_service_pb.js";
import { WorkerService } from "./gen/jobqueue/v1/worker_service_pb.js";
import { DeadLetterService } from "./gen/jobqueue/v1/dead_letter_service_pb.js";
import { QueueService } from "./gen/jobqueue/v1/queue_service_pb.js";
import { ScheduleService } from "./gen/jobqueue/v1/schedule_service_pb.js";

/** A gRPC transport to `address` ("host:port", or a full http:// or https:// URL). */
export function grpcTransport(address: string): Transport {
  const baseUrl = /^https?:\/\//.test(address) ? address : `http://${address}`;
  return createGrpcTransport({ baseUrl });
}

export interface JobQueueClients {
  transport: Transport;
  jobs: Client<typeof JobService>;
  workers: Client<typeof WorkerService>;
  deadLetters: Client<typeof DeadLetterService>;
  queues: Client<typeof QueueService>;
  schedules: Client<typeof ScheduleService>;
}

/** Clients for JobService, WorkerService, DeadLetterService, QueueService and ScheduleService
 * at `address`. */
export function connect(address: string): JobQueueClients {
  const transport = grpcTransport(address);
  return {
    transport,
    jobs: createClient(JobService, transport),
    workers: createClient(WorkerService, transport),
    deadLetters: createClient(DeadLetterService, transport),
    queues: createClient(QueueService, transport),
    schedules: createClient(ScheduleService, transport),
  };
}
