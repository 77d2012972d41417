"""General pretraining: the run parameters, the TrainingSpec and its three launchers, the sensors, the S3 export."""
