"""Work beside the API: lease dispatch, wake-ups, the reaper and the pruner."""
