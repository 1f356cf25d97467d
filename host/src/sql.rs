//! SQL steps on DataFusion, run incrementally.
//!
//! A step's query is planned once, by DataFusion, as if its input were a table named `input`.
//! The plan is then split at the aggregation, if there is one:
//! - the part below it is stateless and runs on each new batch alone;
//! - the aggregation keeps one DataFusion `GroupsAccumulator` per aggregate function across
//!   batches, fed with each batch's rows (so every DataFusion aggregate works: count, sum, avg,
//!   min, max, stddev, approx_distinct, count(DISTINCT ...), ...);
//! - the part above it (projection, HAVING, ORDER BY in complete mode) runs on the aggregate's
//!   output: all groups in complete mode, the groups this batch changed in update mode.
//!
//! The running state (group keys and accumulators) lives in memory; with a checkpoint, each
//! batch also writes the changed keys' state rows (`Aggregator::state_rows`) to the state store,
//! and a restart restores them into fresh accumulators with `merge_batch`.
//! Queries a stream cannot run (ORDER BY or LIMIT without an aggregation in complete mode,
//! window functions, several aggregations, grouping sets) are refused when the step is built,
//! with a message that says why.

use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::Dialect;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{EmitTo, Expr, GroupsAccumulator, LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::optimizer::Optimizer;
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr, create_physical_expr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Ident, ObjectName, ObjectNamePart, visit_expressions_mut};

use crate::error::{Error, Result};
use crate::spec::OutputMode;
use crate::state::StateStore;

/// An aggregate and its `FILTER (WHERE ...)`, if any.
type AggregateWithFilter = (Arc<AggregateFunctionExpr>, Option<Arc<dyn PhysicalExpr>>);

mod functions;

/// Batches shared between the engine and a table the plan scans.
#[derive(Debug, Clone, Default)]
struct Slot(Arc<Mutex<Vec<RecordBatch>>>);

impl Slot {
    fn set(&self, batches: Vec<RecordBatch>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = batches;
    }
    fn get(&self) -> Vec<RecordBatch> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A table whose rows are whatever the engine put in its slot for the current batch.
#[derive(Debug)]
struct SlotTable {
    schema: SchemaRef,
    slot: Slot,
    partitions: usize,
}

#[async_trait::async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Temporary
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        // Spread the batch over the partitions so DataFusion can use every core.
        let nparts = self.partitions.max(1);
        let mut parts = vec![Vec::new(); nparts];
        let mut i = 0;
        for b in self.slot.get() {
            let n = b.num_rows();
            let chunk = n.div_ceil(nparts).max(1);
            let mut off = 0;
            while off < n {
                let len = chunk.min(n - off);
                parts[i % nparts].push(b.slice(off, len));
                off += len;
                i += 1;
            }
        }
        let exec = MemorySourceConfig::try_new_exec(&parts, self.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}

/// A SQL step.
pub(crate) struct SqlStep {
    index: usize,
    ctx: SessionContext,
    input: Slot,
    output_schema: SchemaRef,
    kind: Kind,
}

enum Kind {
    Stateless(LogicalPlan),
    Aggregate(Box<Aggregator>),
}

fn new_context() -> SessionContext {
    let parallelism = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut config = SessionConfig::new().with_target_partitions(parallelism).with_information_schema(false);
    config.options_mut().sql_parser.dialect = Dialect::MySQL;
    // The single-distinct rewrite turns count(DISTINCT x) into two aggregations; the
    // incremental aggregator handles distinct accumulators directly, so keep it as one.
    let rules =
        Optimizer::new().rules.into_iter().filter(|r| r.name() != "single_distinct_aggregation_to_group_by").collect();
    let state =
        SessionStateBuilder::new().with_config(config).with_default_features().with_optimizer_rules(rules).build();
    let ctx = SessionContext::new_with_state(state);
    functions::register(&ctx);
    ctx
}

/// Spark resolves column names case-insensitively, DataFusion folds unquoted names to lower
/// case: an unquoted name that matches exactly one input column ignoring case (Kafka's
/// `timestampType`) becomes that column, quoted.
fn resolve_case(ident: &mut Ident, columns: &[String]) {
    if ident.quote_style.is_some() || columns.iter().any(|c| *c == ident.value.to_lowercase()) {
        return;
    }
    let mut matches = columns.iter().filter(|c| c.eq_ignore_ascii_case(&ident.value));
    if let (Some(c), None) = (matches.next(), matches.next()) {
        ident.value = c.clone();
        ident.quote_style = Some('`');
    }
}

/// Parses `sql` (Spark-flavoured: backquoted identifiers, backslash escapes in strings,
/// `explode`, case-insensitive column names) and plans it over input columns `columns`.
async fn plan_sql(ctx: &SessionContext, sql: &str, columns: &[String]) -> datafusion::error::Result<LogicalPlan> {
    let state = ctx.state();
    let mut statement = state.sql_to_statement(sql, &Dialect::MySQL)?;
    if let datafusion::sql::parser::Statement::Statement(s) = &mut statement {
        let _ = visit_expressions_mut(s.as_mut(), |e| {
            match e {
                SqlExpr::Function(f) if f.name.to_string().eq_ignore_ascii_case("explode") => {
                    f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new("unnest"))]);
                }
                SqlExpr::Identifier(ident) => resolve_case(ident, columns),
                SqlExpr::CompoundIdentifier(parts) => {
                    if let Some(last) = parts.last_mut() {
                        resolve_case(last, columns);
                    }
                }
                _ => {}
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    } else {
        return Err(DataFusionError::Plan("a SQL step must be a query (SELECT ...)".into()));
    }
    let plan = state.statement_to_plan(statement).await?;
    state.optimize(&plan)
}

fn contains_aggregate(plan: &LogicalPlan) -> bool {
    plan.exists(|n| Ok(matches!(n, LogicalPlan::Aggregate(_)))).unwrap_or(false)
}

impl SqlStep {
    /// Plans `query` over an input of `input_schema`. `mode` is the query's output mode, which
    /// decides whether ORDER BY / LIMIT after an aggregation are allowed.
    pub(crate) async fn try_new(index: usize, query: &str, input_schema: SchemaRef, mode: OutputMode) -> Result<Self> {
        let sql_err = |source| Error::Sql { step: index, source };
        let unsupported = |message: String| Error::Unsupported { step: index, message };
        let ctx = new_context();
        let input = Slot::default();
        let partitions = ctx.state().config().target_partitions();
        ctx.register_table(
            "input",
            Arc::new(SlotTable { schema: input_schema.clone(), slot: input.clone(), partitions }),
        )
        .map_err(sql_err)?;
        let columns: Vec<String> = input_schema.fields().iter().map(|f| f.name().clone()).collect();
        let plan = plan_sql(&ctx, query, &columns).await.map_err(sql_err)?;

        // Refuse what a stream cannot do, naming the operator.
        let mut aggregates = 0;
        let mut problem = None;
        plan.apply(|node| {
            let what = match node {
                LogicalPlan::Aggregate(a) => {
                    aggregates += 1;
                    if a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                        Some("GROUPING SETS, CUBE and ROLLUP are not supported on streams".to_string())
                    } else {
                        None
                    }
                }
                LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
                    let op = if matches!(node, LogicalPlan::Sort(_)) { "ORDER BY" } else { "LIMIT" };
                    if !contains_aggregate(node) {
                        Some(format!("{op} is not supported on streams without an aggregation (a stream never ends, so it cannot be sorted or cut)"))
                    } else if mode != OutputMode::Complete {
                        Some(format!("{op} after an aggregation is only supported in complete output mode (this query runs in {mode} mode)"))
                    } else {
                        None
                    }
                }
                LogicalPlan::Window(_) => Some("window functions (OVER ...) are not supported on streams; use GROUP BY".into()),
                LogicalPlan::Distinct(_) => Some("SELECT DISTINCT is not supported yet on streams; use GROUP BY".into()),
                LogicalPlan::Join(_) | LogicalPlan::Union(_) => Some("joins and unions are not supported in a SQL step yet".into()),
                _ => None,
            };
            if let Some(w) = what {
                problem = Some(w);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(sql_err)?;
        if let Some(p) = problem {
            return Err(unsupported(p));
        }
        let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let kind = match aggregates {
            0 => Kind::Stateless(plan),
            1 => Kind::Aggregate(Box::new(Aggregator::try_new(&ctx, &plan).map_err(sql_err)?)),
            _ => {
                return Err(unsupported(
                    "more than one aggregation in a query is not supported on streams; split it into steps or use one GROUP BY".into(),
                ));
            }
        };
        Ok(SqlStep { index, ctx, input, output_schema, kind })
    }

    /// Whether this step keeps state across batches (has an aggregation).
    pub(crate) fn is_stateful(&self) -> bool {
        matches!(self.kind, Kind::Aggregate(_))
    }

    /// The schema of the step's output.
    pub(crate) fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// Runs the step on batch `batch_id`. For an aggregation, returns what `mode` says to emit
    /// and, with a state store attached, commits state version `batch_id + 1`.
    pub(crate) async fn process(
        &mut self,
        batch_id: u64,
        input: Vec<RecordBatch>,
        mode: OutputMode,
    ) -> Result<Vec<RecordBatch>> {
        let index = self.index;
        let sql_err = |source| Error::Sql { step: index, source };
        self.input.set(input);
        let out = match &mut self.kind {
            Kind::Stateless(plan) => execute(&self.ctx, plan).await.map_err(sql_err),
            Kind::Aggregate(agg) => match agg.process(&self.ctx, mode).await.map_err(sql_err) {
                Err(e) => Err(e),
                Ok((out, delta)) => {
                    let started = std::time::Instant::now();
                    if let Some(store) = agg.store.clone() {
                        let schema = agg.state_schema().map_err(sql_err)?;
                        let delta = match delta {
                            Some(d) => d,
                            None => RecordBatch::new_empty(schema.clone()),
                        };
                        store.commit(batch_id + 1, &schema, &delta, || agg.full_state().map_err(sql_err)).await?;
                    }
                    agg.commit_ms = started.elapsed().as_millis() as u64;
                    Ok(out)
                }
            },
        };
        self.input.set(Vec::new());
        out
    }

    /// Attaches durable state: checks the stored fingerprint against this query's and loads
    /// state `version`.
    pub(crate) async fn attach_state(&mut self, store: StateStore, version: u64, checkpoint: &str) -> Result<()> {
        let index = self.index;
        let Kind::Aggregate(agg) = &mut self.kind else { return Ok(()) };
        let now = agg.fingerprint();
        match store.schema_fingerprint().await? {
            Some(before) if before != now => {
                return Err(Error::IncompatibleChange {
                    checkpoint: checkpoint.to_string(),
                    what: format!(
                        "the aggregation in SQL step {index} (grouping keys, aggregate functions, state schema)"
                    ),
                    before,
                    now,
                });
            }
            Some(_) => {}
            None => store.write_schema_fingerprint(&now).await?,
        }
        let rows = store.load(version).await?;
        agg.restore(&rows).map_err(|source| Error::Sql { step: index, source })?;
        agg.store = Some(store);
        Ok(())
    }

    /// The fingerprint of the step's state layout, for a stateful step.
    pub(crate) fn state_fingerprint(&self) -> Option<String> {
        match &self.kind {
            Kind::Aggregate(a) => Some(a.fingerprint()),
            Kind::Stateless(_) => None,
        }
    }

    /// State metrics, for a stateful step.
    pub(crate) fn state_metrics(&self) -> Option<StateMetrics> {
        match &self.kind {
            Kind::Aggregate(a) => Some(a.metrics()),
            Kind::Stateless(_) => None,
        }
    }
}

/// Runs a plan and returns its output in partition order, so the same input always gives the
/// same rows in the same order (a coalesced stream interleaves partitions as they finish).
async fn execute(ctx: &SessionContext, plan: &LogicalPlan) -> datafusion::error::Result<Vec<RecordBatch>> {
    let df = ctx.execute_logical_plan(plan.clone()).await?;
    let out = df.collect_partitioned().await?;
    Ok(out.into_iter().flatten().filter(|b| b.num_rows() > 0).collect())
}

/// State metrics of one stateful operator (Spark's `stateOperators[]`).
#[derive(Debug, Clone, Default)]
pub(crate) struct StateMetrics {
    pub(crate) num_rows_total: u64,
    pub(crate) num_rows_updated: u64,
    pub(crate) memory_used_bytes: u64,
    pub(crate) commit_time_ms: u64,
}

/// An incremental grouped aggregation: group keys plus one accumulator per aggregate.
struct Aggregator {
    /// The plan below the aggregation (reads the `input` slot).
    below: LogicalPlan,
    /// The plan above it (reads `out`).
    above: LogicalPlan,
    out: Slot,
    out_schema: SchemaRef,
    /// The aggregate's output column names (group keys, then aggregates).
    names: Vec<String>,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    aggs: Vec<AggregateWithFilter>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Group keys to group ids (DataFusion's own hash tables); `None` for a global aggregate.
    groups: Option<Box<dyn GroupValues>>,
    /// Number of groups (1 for a global aggregate once it has seen a row).
    num_groups: usize,
    touched: Vec<bool>,
    touched_list: Vec<u32>,
    last_updated: u64,
    /// Durable state, when the query has a checkpoint.
    store: Option<StateStore>,
    commit_ms: u64,
}

fn group_accumulator(agg: &Arc<AggregateFunctionExpr>) -> datafusion::error::Result<Box<dyn GroupsAccumulator>> {
    if agg.groups_accumulator_supported() {
        agg.create_groups_accumulator()
    } else {
        let a = agg.clone();
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || a.create_accumulator())))
    }
}

const AGG_TABLE: &str = "__sluice_aggregate";

impl Aggregator {
    fn try_new(ctx: &SessionContext, plan: &LogicalPlan) -> datafusion::error::Result<Self> {
        let mut found = None;
        plan.apply(|n| {
            if let LogicalPlan::Aggregate(a) = n {
                found = Some(a.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let agg = found.ok_or_else(|| DataFusionError::Internal("no aggregate in plan".into()))?;
        let below = agg.input.as_ref().clone();
        let below_df: &DFSchema = below.schema();
        let below_arrow: Schema = below_df.as_arrow().clone();
        let props = ExecutionProps::new();
        let pctx = PhysicalPlanningContext::default();
        let group_exprs = agg
            .group_expr
            .iter()
            .map(|e| create_physical_expr(e, below_df, &props, &pctx))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut aggs = Vec::new();
        for e in &agg.aggr_expr {
            let lowered = LoweredAggregateBuilder::new(e, below_df, &below_arrow, &props, &pctx).build()?;
            aggs.push((lowered.aggregate, lowered.filter));
        }
        let accumulators =
            aggs.iter().map(|(f, _)| group_accumulator(f)).collect::<datafusion::error::Result<Vec<_>>>()?;

        // The aggregate's output, as a table with plain column names...
        let agg_df = agg.schema.clone();
        let out_fields: Vec<Field> = agg_df
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| Field::new(format!("f{i}"), f.data_type().clone(), true))
            .collect();
        let out_schema = Arc::new(Schema::new(out_fields));
        let out = Slot::default();
        let partitions = ctx.state().config().target_partitions();
        let table = Arc::new(SlotTable { schema: out_schema.clone(), slot: out.clone(), partitions });
        // ...projected back to the aggregate's qualified names, so the plan above still binds.
        let exprs: Vec<Expr> = agg_df
            .iter()
            .enumerate()
            .map(|(i, (q, f))| {
                Expr::Column(Column::new(Some(AGG_TABLE), format!("f{i}"))).alias_qualified(q.cloned(), f.name())
            })
            .collect();
        let replacement =
            LogicalPlanBuilder::scan(AGG_TABLE, provider_as_source(table), None)?.project(exprs)?.build()?;
        let above = plan
            .clone()
            .transform_up(|n| {
                Ok(if matches!(n, LogicalPlan::Aggregate(_)) {
                    Transformed::yes(replacement.clone())
                } else {
                    Transformed::no(n)
                })
            })?
            .data;

        let key_schema = Arc::new(Schema::new(
            agg_df.fields().iter().take(group_exprs.len()).map(|f| f.as_ref().clone()).collect::<Vec<_>>(),
        ));
        let groups =
            if group_exprs.is_empty() { None } else { Some(new_group_values(key_schema, &GroupOrdering::None)?) };
        let names = agg_df.fields().iter().map(|f| f.name().clone()).collect();
        Ok(Aggregator {
            below,
            above,
            out,
            out_schema,
            names,
            group_exprs,
            aggs,
            accumulators,
            groups,
            num_groups: 0,
            touched: Vec::new(),
            touched_list: Vec::new(),
            last_updated: 0,
            store: None,
            commit_ms: 0,
        })
    }

    fn update(&mut self, batch: &RecordBatch) -> datafusion::error::Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let mut idx: Vec<usize> = Vec::with_capacity(n);
        match &mut self.groups {
            Some(groups) => {
                let cols = self
                    .group_exprs
                    .iter()
                    .map(|e| e.evaluate(batch)?.into_array(n))
                    .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
                groups.intern(&cols, &mut idx)?;
                self.num_groups = groups.len();
            }
            None => {
                self.num_groups = 1;
                idx.resize(n, 0);
            }
        }
        self.touched.resize(self.num_groups, false);
        for &g in &idx {
            if !self.touched[g] {
                self.touched[g] = true;
                self.touched_list.push(g as u32);
            }
        }
        for ((agg, filter), acc) in self.aggs.iter().zip(self.accumulators.iter_mut()) {
            let values = agg
                .expressions()
                .iter()
                .map(|e| e.evaluate(batch)?.into_array(n))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let filter = match filter {
                Some(f) => {
                    let a = f.evaluate(batch)?.into_array(n)?;
                    Some(a.as_any().downcast_ref::<BooleanArray>().cloned().ok_or_else(|| {
                        DataFusionError::Internal("aggregate FILTER did not evaluate to booleans".into())
                    })?)
                }
                None => None,
            };
            acc.update_batch(&values, &idx, filter.as_ref(), self.num_groups)?;
        }
        Ok(())
    }

    /// Every group's accumulator state, without disturbing the running accumulators.
    fn states(&mut self) -> datafusion::error::Result<Vec<Vec<ArrayRef>>> {
        let n = self.num_groups;
        let idx: Vec<usize> = (0..n).collect();
        let mut out = Vec::with_capacity(self.accumulators.len());
        for acc in self.accumulators.iter_mut() {
            let state = acc.state(EmitTo::All)?;
            acc.merge_batch(&state, &idx, n)?;
            out.push(state);
        }
        Ok(out)
    }

    /// Final values computed from `states`.
    fn evaluate(&self, states: &[Vec<ArrayRef>]) -> datafusion::error::Result<Vec<ArrayRef>> {
        let n = self.num_groups;
        let idx: Vec<usize> = (0..n).collect();
        let mut out = Vec::with_capacity(states.len());
        for ((agg, _), state) in self.aggs.iter().zip(states) {
            let mut copy = group_accumulator(agg)?;
            copy.merge_batch(state, &idx, n)?;
            out.push(copy.evaluate(EmitTo::All)?);
        }
        Ok(out)
    }

    /// The group keys, in group-id order, without disturbing the table.
    fn keys(&mut self) -> datafusion::error::Result<Vec<ArrayRef>> {
        match &mut self.groups {
            Some(groups) => {
                // Emitting drains the table; interning the keys again in the same order gives
                // them back the same ids.
                let keys = groups.emit(EmitTo::All)?;
                let mut ids = Vec::with_capacity(self.num_groups);
                groups.intern(&keys, &mut ids)?;
                debug_assert!(ids.iter().enumerate().all(|(i, g)| i == *g));
                Ok(keys)
            }
            None => Ok(Vec::new()),
        }
    }

    /// The schema of state rows: the group keys, then each aggregate's state fields.
    fn state_schema(&self) -> datafusion::error::Result<SchemaRef> {
        let nk = self.group_exprs.len();
        let mut fields: Vec<Field> = self
            .out_schema
            .fields()
            .iter()
            .zip(&self.names)
            .take(nk)
            .map(|(f, name)| f.as_ref().clone().with_name(name))
            .collect();
        for (i, (agg, _)) in self.aggs.iter().enumerate() {
            for f in agg.state_fields()? {
                // `count(*)[count]`, `avg(x)[sum]`: the output column and the state field.
                let part = f.name().rsplit_once('[').map(|(_, p)| p.trim_end_matches(']')).unwrap_or(f.name());
                fields.push(Field::new(format!("{}[{part}]", self.names[nk + i]), f.data_type().clone(), true));
            }
        }
        let metadata = [(crate::state::KEYS_METADATA.to_string(), self.group_exprs.len().to_string())].into();
        Ok(Arc::new(Schema::new_with_metadata(fields, metadata)))
    }

    /// What the state's layout depends on: group key types and aggregate functions. A restart
    /// whose fingerprint differs cannot use the checkpointed state.
    pub(crate) fn fingerprint(&self) -> String {
        let keys: Vec<String> =
            self.out_schema.fields().iter().take(self.group_exprs.len()).map(|f| f.data_type().to_string()).collect();
        let aggs: Vec<String> = self.aggs.iter().map(|(a, _)| a.fun().name().to_string()).collect();
        let state = self
            .state_schema()
            .map(|s| s.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        format!("keys=[{}] aggregates=[{}] state=[{state}]", keys.join(","), aggs.join(","))
    }

    /// Rows of state: keys then states, for the given groups (all if `None`).
    fn state_rows(
        &self,
        keys: &[ArrayRef],
        states: &[Vec<ArrayRef>],
        only: Option<&[u32]>,
    ) -> datafusion::error::Result<RecordBatch> {
        let schema = self.state_schema()?;
        let mut cols: Vec<ArrayRef> = keys.to_vec();
        for st in states {
            cols.extend(st.iter().cloned());
        }
        let cols = cols
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { arrow_cast::cast(&c, f.data_type()) })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let opts = arrow_array::RecordBatchOptions::new().with_row_count(Some(self.num_groups));
        let batch = RecordBatch::try_new_with_options(schema, cols, &opts)?;
        match only {
            None => Ok(batch),
            Some(ids) => {
                Ok(arrow_select::take::take_record_batch(&batch, &arrow_array::UInt32Array::from(ids.to_vec()))?)
            }
        }
    }

    /// Replaces the state with `rows` (state rows in order; the last row per key wins).
    fn restore(&mut self, rows: &[RecordBatch]) -> datafusion::error::Result<()> {
        let schema = self.state_schema()?;
        let all = arrow_select::concat::concat_batches(&schema, rows)?;
        let nk = self.group_exprs.len();
        let n = all.num_rows();
        // Resolve last-wins per key with a scratch table.
        let (last, num): (Vec<usize>, usize) = match &self.groups {
            Some(_) => {
                let key_schema = Arc::new(Schema::new(
                    schema.fields().iter().take(nk).map(|f| f.as_ref().clone()).collect::<Vec<_>>(),
                ));
                let mut scratch = new_group_values(key_schema, &GroupOrdering::None)?;
                let mut ids = Vec::with_capacity(n);
                scratch.intern(&all.columns()[..nk], &mut ids)?;
                let mut last = vec![0usize; scratch.len()];
                for (row, g) in ids.iter().enumerate() {
                    last[*g] = row;
                }
                let num = last.len();
                (last, num)
            }
            None if n > 0 => (vec![n - 1], 1),
            None => (Vec::new(), 0),
        };
        let picked = arrow_select::take::take_record_batch(
            &all,
            &arrow_array::UInt32Array::from(last.iter().map(|r| *r as u32).collect::<Vec<_>>()),
        )?;
        self.accumulators =
            self.aggs.iter().map(|(f, _)| group_accumulator(f)).collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut idx = Vec::with_capacity(num);
        if let Some(groups) = &mut self.groups {
            groups.clear_shrink(0);
            groups.intern(&picked.columns()[..nk], &mut idx)?;
        } else {
            idx = (0..num).collect();
        }
        self.num_groups = num;
        let mut col = nk;
        for ((agg, _), acc) in self.aggs.iter().zip(self.accumulators.iter_mut()) {
            let width = agg.state_fields()?.len();
            let st: Vec<ArrayRef> = picked.columns()[col..col + width].to_vec();
            acc.merge_batch(&st, &idx, num)?;
            col += width;
        }
        self.touched = vec![false; num];
        self.touched_list.clear();
        Ok(())
    }

    async fn process(
        &mut self,
        ctx: &SessionContext,
        mode: OutputMode,
    ) -> datafusion::error::Result<(Vec<RecordBatch>, Option<RecordBatch>)> {
        for b in execute(ctx, &self.below).await? {
            self.update(&b)?;
        }
        self.last_updated = self.touched_list.len() as u64;
        if self.num_groups == 0 || (mode != OutputMode::Complete && self.touched_list.is_empty()) {
            self.reset_touched();
            return Ok((Vec::new(), None));
        }
        let keys = self.keys()?;
        let states = self.states()?;
        let mut changed = self.touched_list.clone();
        changed.sort_unstable();
        // The changed keys' state rows, only when a state store will keep them.
        let delta = match self.store {
            Some(_) => Some(self.state_rows(&keys, &states, Some(&changed))?),
            None => None,
        };
        let mut columns = keys;
        columns.extend(self.evaluate(&states)?);
        let columns = columns
            .into_iter()
            .zip(self.out_schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { arrow_cast::cast(&c, f.data_type()) })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let opts = arrow_array::RecordBatchOptions::new().with_row_count(Some(self.num_groups));
        let mut batch = RecordBatch::try_new_with_options(self.out_schema.clone(), columns, &opts)?;
        if mode == OutputMode::Update {
            let indices = arrow_array::UInt32Array::from(changed);
            batch = arrow_select::take::take_record_batch(&batch, &indices)?;
        }
        self.reset_touched();
        self.out.set(vec![batch]);
        let result = execute(ctx, &self.above).await;
        self.out.set(Vec::new());
        Ok((result?, delta))
    }

    /// Every key's state, for a snapshot.
    fn full_state(&mut self) -> datafusion::error::Result<RecordBatch> {
        let keys = self.keys()?;
        let states = self.states()?;
        self.state_rows(&keys, &states, None)
    }

    fn reset_touched(&mut self) {
        for &g in &self.touched_list {
            self.touched[g as usize] = false;
        }
        self.touched_list.clear();
    }

    fn metrics(&self) -> StateMetrics {
        let acc: usize = self.accumulators.iter().map(|a| a.size()).sum();
        let keys = self.groups.as_ref().map(|g| g.size()).unwrap_or(0);
        StateMetrics {
            num_rows_total: self.num_groups as u64,
            num_rows_updated: self.last_updated,
            memory_used_bytes: (acc + keys) as u64,
            commit_time_ms: self.commit_ms,
        }
    }
}
