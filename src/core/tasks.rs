//! Task templates, parameters, aggregation and jobs (sans-IO).
