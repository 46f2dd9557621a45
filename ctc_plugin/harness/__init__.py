"""The benchmark harness of this project: every method on the zoo models, resumable, reported.

It runs the reusable metrics of [`ctc_plugin.evaluation`][ctc_plugin.evaluation] on the zoo's
models and data sets with the methods of [`methods`][ctc_plugin.harness.methods] (ours and the
peers') as a job of the resumable engine ([`run_job`][ctc_plugin.resumable.job.run_job],
embedded or on Ray), stores each finished piece ([`store`][ctc_plugin.harness.store]) and
writes the report ([`report`][ctc_plugin.harness.report]). ``ctc-plugin benchmark`` drives it.
"""
