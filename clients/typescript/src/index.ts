// Public surface of the package: the generated messages and services, plus a gRPC client factory.
export * from "./gen/jobqueue/v1/job_pb.js";
export * from "./gen/jobqueue/v1/job_service_pb.js";
export * from "./gen/jobqueue/v1/worker_service_pb.js";
export * from "./gen/jobqueue/v1/dead_letter_service_pb.js";
export * from "./gen/jobqueue/v1/queue_service_pb.js";
export * from "./gen/jobqueue/v1/schedule_service_pb.js";
export * from "./client.js";
export * from "./worker.js";
export * from "./wait.js";
