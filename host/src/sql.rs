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
//! The state (group keys and accumulators) lives in memory for now; [`Aggregator::state_rows`]
//! and the accumulators' `state`/`merge_batch` are what a durable state store builds on.
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
use crate::sink::OutputMode;

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

/// Parses `sql` (Spark-flavoured: backquoted identifiers, backslash escapes in strings,
/// `explode`) and plans it.
async fn plan_sql(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<LogicalPlan> {
    let state = ctx.state();
    let mut statement = state.sql_to_statement(sql, &Dialect::MySQL)?;
    if let datafusion::sql::parser::Statement::Statement(s) = &mut statement {
        let _ = visit_expressions_mut(s.as_mut(), |e| {
            if let SqlExpr::Function(f) = e {
                if f.name.to_string().eq_ignore_ascii_case("explode") {
                    f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new("unnest"))]);
                }
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
        ctx.register_table("input", Arc::new(SlotTable { schema: input_schema, slot: input.clone(), partitions }))
            .map_err(sql_err)?;
        let plan = plan_sql(&ctx, query).await.map_err(sql_err)?;

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
            1 => Kind::Aggregate(Box::new(Aggregator::try_new(&ctx, &plan, &input).map_err(sql_err)?)),
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

    /// Runs the step on one batch. For an aggregation, returns what `mode` says to emit.
    pub(crate) async fn process(&mut self, input: Vec<RecordBatch>, mode: OutputMode) -> Result<Vec<RecordBatch>> {
        let index = self.index;
        let sql_err = |source| Error::Sql { step: index, source };
        self.input.set(input);
        let out = match &mut self.kind {
            Kind::Stateless(plan) => execute(&self.ctx, plan).await.map_err(sql_err),
            Kind::Aggregate(agg) => agg.process(&self.ctx, mode).await.map_err(sql_err),
        };
        self.input.set(Vec::new());
        out
    }

    /// State metrics, for a stateful step.
    pub(crate) fn state_metrics(&self) -> Option<StateMetrics> {
        match &self.kind {
            Kind::Aggregate(a) => Some(a.metrics()),
            Kind::Stateless(_) => None,
        }
    }
}

async fn execute(ctx: &SessionContext, plan: &LogicalPlan) -> datafusion::error::Result<Vec<RecordBatch>> {
    let df = ctx.execute_logical_plan(plan.clone()).await?;
    let out = df.collect().await?;
    Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
}

/// State metrics of one stateful operator (Spark's `stateOperators[]`).
#[derive(Debug, Clone, Default)]
pub(crate) struct StateMetrics {
    pub(crate) num_rows_total: u64,
    pub(crate) num_rows_updated: u64,
    pub(crate) memory_used_bytes: u64,
}

/// An incremental grouped aggregation: group keys plus one accumulator per aggregate.
struct Aggregator {
    /// The plan below the aggregation (reads the `input` slot).
    below: LogicalPlan,
    /// The plan above it (reads `out`).
    above: LogicalPlan,
    out: Slot,
    out_schema: SchemaRef,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    aggs: Vec<(Arc<AggregateFunctionExpr>, Option<Arc<dyn PhysicalExpr>>)>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Group keys to group ids (DataFusion's own hash tables); `None` for a global aggregate.
    groups: Option<Box<dyn GroupValues>>,
    /// Number of groups (1 for a global aggregate once it has seen a row).
    num_groups: usize,
    touched: Vec<bool>,
    touched_list: Vec<u32>,
    last_updated: u64,
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
    fn try_new(ctx: &SessionContext, plan: &LogicalPlan, _input: &Slot) -> datafusion::error::Result<Self> {
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
        Ok(Aggregator {
            below,
            above,
            out,
            out_schema,
            group_exprs,
            aggs,
            accumulators,
            groups,
            num_groups: 0,
            touched: Vec::new(),
            touched_list: Vec::new(),
            last_updated: 0,
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

    /// Final values of every group, without disturbing the running state.
    fn evaluate_all(&mut self) -> datafusion::error::Result<Vec<ArrayRef>> {
        let n = self.num_groups;
        let idx: Vec<usize> = (0..n).collect();
        let mut out = Vec::with_capacity(self.accumulators.len());
        for ((agg, _), acc) in self.aggs.iter().zip(self.accumulators.iter_mut()) {
            let state = acc.state(EmitTo::All)?;
            acc.merge_batch(&state, &idx, n)?;
            let mut copy = group_accumulator(agg)?;
            copy.merge_batch(&state, &idx, n)?;
            out.push(copy.evaluate(EmitTo::All)?);
        }
        Ok(out)
    }

    async fn process(&mut self, ctx: &SessionContext, mode: OutputMode) -> datafusion::error::Result<Vec<RecordBatch>> {
        for b in execute(ctx, &self.below).await? {
            self.update(&b)?;
        }
        self.last_updated = self.touched_list.len() as u64;
        if self.num_groups == 0 || (mode != OutputMode::Complete && self.touched_list.is_empty()) {
            self.reset_touched();
            return Ok(Vec::new());
        }
        let mut columns = match &mut self.groups {
            Some(groups) => {
                // Emitting drains the table; interning the keys again in the same order gives
                // them back the same ids.
                let keys = groups.emit(EmitTo::All)?;
                let mut ids = Vec::with_capacity(self.num_groups);
                groups.intern(&keys, &mut ids)?;
                debug_assert!(ids.iter().enumerate().all(|(i, g)| i == *g));
                keys
            }
            None => Vec::new(),
        };
        columns.extend(self.evaluate_all()?);
        let columns = columns
            .into_iter()
            .zip(self.out_schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { arrow_cast::cast(&c, f.data_type()) })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut batch = RecordBatch::try_new(self.out_schema.clone(), columns)?;
        if mode == OutputMode::Update {
            let mut changed = self.touched_list.clone();
            changed.sort_unstable();
            let indices = arrow_array::UInt32Array::from(changed);
            batch = arrow_select::take::take_record_batch(&batch, &indices)?;
        }
        self.reset_touched();
        self.out.set(vec![batch]);
        let result = execute(ctx, &self.above).await;
        self.out.set(Vec::new());
        result
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
        }
    }
}
